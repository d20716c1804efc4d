"""The error type of every WarpDrive: a ValueError a user can fix (a bad size, a weight that does not fit).

A drive knows nothing of the command line; the task registry registers this type with ``run_cli``, which prints
it as one line and exits 2, as it does for the engines' own ``UserError``.
"""


class DriveError(ValueError):
    """A drive configuration or weights problem the user can fix."""
