"""WarpDrives: model plug-ins, each a (config dataclass, nn.Module) pair in its own folder.

Pure torch: no Lightning, no files, no config files, no CLI; errors are ``errors.DriveError`` (a ValueError).
A drive becomes usable as a task through one registration next to its engine (``Engines/registry.py``).
"""
