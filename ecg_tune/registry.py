"""A small name -> object registry; models, transforms and augmentation policies each have one.

The names registered here are the names that appear in config and search-space files, so adding
a model or a transform is one new entry with no `if name == ...` chain anywhere else.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from ecg_tune.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects of one family (e.g. "model"), looked up by name."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.family} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
