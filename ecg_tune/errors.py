"""The one exception type users see: a one-line message naming the file or key and the problem.

Raised at the boundaries (data sources, config files, command-line options). The CLI prints it
without a traceback and exits with code 2.
"""

from collections.abc import Callable
from typing import Any

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


class OutOfGpuMemory(EcgTuneError):
    """A trial's model and batches did not fit in the GPU memory it was given: its one-line
    failure, naming the config and what to lower (the same config fails the same way again)."""


class SearchInterrupted(EcgTuneError):
    """A search stopped before its end (Ctrl-C, SIGUSR1, low disk space) with its state saved for
    --resume; the CLI exits with 130, as for an interrupt."""


def validation_message(exc: ValidationError, name: Callable[[str], str] | None = None) -> str:
    """pydantic's first error as `key: problem` (nested keys joined by ': '); `name` renames the
    first key (e.g. to a command-line flag)."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if loc and name is not None:
        loc[0] = name(loc[0])
    message = problem_text(first)
    return ": ".join([*loc, message]) if loc else message


def problem_text(error: Any) -> str:
    """One error's problem in plain words (bounds say what the value must be, and what it was)."""
    kind, ctx, given = error["type"], error.get("ctx") or {}, error.get("input")
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds:
        words, key = bounds[kind]
        limit = "positive" if (kind, ctx[key]) == ("greater_than", 0) else f"{words} {ctx[key]}"
        return f"must be {limit}, got {given!r}"
    if kind == "extra_forbidden":
        return "unknown key"
    return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
