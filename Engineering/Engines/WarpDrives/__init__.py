"""WarpDrives: the model families, one folder (package) per family, each the whole plug-in.

A family folder holds its pure-torch ``network`` subpackage (no Lightning, no files, no config, no CLI; errors are
``errors.DriveError``, a ValueError), its engine(s) (LightningModules), its keys and flags, its extra output steps
and lifecycle hooks if any, and the ``register(TaskSpec(...))`` of its task(s) in its ``__init__``; the registry
imports every sub-package. Families never import each other (an import-linter independence contract): what two
share lives in the plain modules here (``resnet``, ``equalized``, ``errors``), and a family that needs another's
trained model asks the registry for it (``saved_runs.upstream_engine``).
"""
