"""The one exception type users see: a one-line message naming the file or key and the problem.

Raised at the boundaries (data sources, config files, command-line options). The CLI prints it
without a traceback and exits with code 2.
"""


class EcgTuneError(Exception):
    """A problem with the user's input, described in one line."""

    def __init__(self, message: str) -> None:
        # Messages are printed as one line: fold any newline a library message may carry.
        super().__init__(" ".join(str(message).split()))


class DataError(EcgTuneError):
    """A data source that cannot be read or would give a wrong dataset."""


class ConfigError(EcgTuneError):
    """A configuration value, space file or option that cannot work."""
