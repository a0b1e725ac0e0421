"""The one exception type for errors a user can cause (bad data, names, numbers, files)."""


class PyrovaeError(ValueError):
    """A user-facing error: the message names the problem and the fix.

    The CLI prints it as one line and exits with status 2; the Python API lets it propagate.
    """
