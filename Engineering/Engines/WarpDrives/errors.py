"""The error type of every WarpDrive, a ValueError a user can fix (a bad size, a weight that does not fit), and
the value checks every drive config shares.

A drive knows nothing of the command line; the task registry registers this type with ``run_cli``, which prints
it as one line and exits 2, as it does for the engines' own ``UserError``.
"""


class DriveError(ValueError):
    """A drive configuration or weights problem the user can fix."""


def positive_int(name: str, value, error: type[DriveError] = DriveError) -> int:
    """``value`` if it is an int >= 1 (not a bool), else ``error`` naming the field."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return value
