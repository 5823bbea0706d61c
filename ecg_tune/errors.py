"""The one exception type users see: a one-line message naming the file or key and the problem.

Raised at the boundaries (data sources, config files, command-line options). The CLI prints it
without a traceback and exits with code 2.
"""

from pydantic import ValidationError


class EcgTuneError(Exception):
    """A problem with the user's input, described in one line."""

    def __init__(self, message: str) -> None:
        # Messages are printed as one line: fold any newline a library message may carry.
        super().__init__(" ".join(str(message).split()))


class DataError(EcgTuneError):
    """A data source that cannot be read or would give a wrong dataset."""


class ConfigError(EcgTuneError):
    """A configuration value, space file or option that cannot work."""


def validation_message(exc: ValidationError) -> str:
    """pydantic's first error as `key: problem` (nested keys joined by ': ')."""
    first = exc.errors()[0]
    key = ": ".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{key}: {message}" if key else message
