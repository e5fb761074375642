"""The one exception type for bad user input: its message is a single line naming the file and place."""


class KitError(Exception):
    """Bad input (data, config, run). The message is one line and names the file, row or key."""


class DataError(KitError):
    """A competition file is malformed."""


class Interrupted(KitError):
    """Work stopped on a signal after saving what resumes it; ``exit_code`` is 128 + the signal (143, 130)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
