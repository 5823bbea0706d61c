"""Registries of parts (models, transforms, augmentation policies) and the options parts declare.

The names registered here are the names that appear in config and search-space files, so adding
a model or a transform is one new entry with no `if name == ...` chain anywhere else.

A part declares the config keys it reads as a `PartOptions` model (pydantic: types, defaults and
bounds in one place), as its `Options` class attribute; a registry may give a default for
entries that declare none (every augmentation policy takes the same strengths). `TrainConfig`
accepts exactly the union of the options of every registered part, validates them with the
parts' own models, and hands each part its typed options; the bundle saves them the same way.
Two parts may share a key (resnet1d and ecg_cnn both read `width`) only with the same
definition, checked when the second registers. Options may also name, as `record_caps`, the keys
that cap how many training records a part learns from per epoch (cnn_svm's `svm_max_train`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from ecg_tune.errors import ConfigError, validation_message

T = TypeVar("T")


class PartOptions(BaseModel):
    """Base of a part's options. A config carries every part's keys, so other keys are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    # Keys (integers) that cap how many training records the part learns from, a subsample drawn
    # per epoch; the refit, which learns from every record once, raises them to the record count.
    record_caps: ClassVar[tuple[str, ...]] = ()


class NoOptions(PartOptions):
    """The options of a part that reads no config key."""


def _signature(info: FieldInfo) -> tuple[object, ...]:
    """What must agree when two parts declare the same key."""
    return (info.annotation, info.default, tuple(repr(m) for m in info.metadata))


class Registry(Generic[T]):
    """Objects of one family (e.g. "model"), looked up by name."""

    def __init__(self, family: str, default_options: type[PartOptions] = NoOptions) -> None:
        self.family = family
        self.default_options = default_options
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name`."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.family} {name!r} is registered twice")
            self._check_options(name, obj)
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> None:
        """Remove an entry (tests register temporary parts)."""
        self._entries.pop(name, None)

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

    # -- options ---------------------------------------------------------------------------

    def options_class(self, name: str) -> type[PartOptions]:
        """The options model of the entry `name` (the registry's default if it declares none)."""
        return self._options_of(self.get(name))

    def options(self, name: str, values: Mapping[str, Any]) -> PartOptions:
        """The typed options of entry `name`, read from a config's values (ConfigError if bad)."""
        try:
            return self.options_class(name).model_validate(dict(values))
        except ValidationError as exc:
            raise ConfigError(validation_message(exc)) from None

    def option_fields(self) -> dict[str, FieldInfo]:
        """Every config key some entry of this registry reads, with its definition."""
        fields: dict[str, FieldInfo] = {}
        for obj in self._entries.values():
            fields.update(self._options_of(obj).model_fields)
        return fields

    def record_caps(self) -> list[str]:
        """Every `record_caps` key some entry of this registry declares, sorted."""
        return sorted({key for obj in self._entries.values() for key in self._options_of(obj).record_caps})

    def _options_of(self, obj: object) -> type[PartOptions]:
        options = getattr(obj, "Options", None)
        if isinstance(options, type) and issubclass(options, PartOptions):
            return options
        return self.default_options

    def _check_options(self, name: str, obj: object) -> None:
        known = self.option_fields()
        for key, info in self._options_of(obj).model_fields.items():
            if key in known and _signature(known[key]) != _signature(info):
                raise ValueError(
                    f"{self.family} {name!r} declares option {key!r} differently from another "
                    f"{self.family}; share one definition"
                )
