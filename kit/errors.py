"""The one exception type for bad user input: its message is a single line naming the file and place."""


class KitError(Exception):
    """Bad input (data, config, run). The message is one line and names the file, row or key."""


class DataError(KitError):
    """A competition file is malformed."""
