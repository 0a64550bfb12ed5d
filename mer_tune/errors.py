"""The one exception type users see: a one-line message naming what is wrong."""


class MerTuneError(Exception):
    """A problem with the user's input or environment (not a bug).

    The CLI prints ``error: <message>`` on one line and exits with ``exit_code``:
    2 for usage errors (bad options, bad config or space keys), 1 for the rest.
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(MerTuneError):
    """Bad options, config keys or search-space entries (exit code 2)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


class SearchInterrupted(MerTuneError):
    """A search stopped by Ctrl-C: its state is saved and it can be resumed (exit 130)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=130)
