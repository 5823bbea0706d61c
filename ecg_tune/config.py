"""The typed training configuration: one `TrainConfig`, validated once where it enters.

Everything that trains (the `train` command, the Tune trainable, the refit, the benchmarks) takes
a `TrainConfig`. It holds the keys of the training run itself (which parts, the input pipeline,
the optimiser) and, flat beside them, the options every registered part declares (see
ecg_tune/registry.py): a model's sizes, a transform's wavelet and levels, the augmentation's noise
strength. Each part validates its own keys; names of models, transforms and augmentation policies
are checked against their registries here, so a typo is a one-line error naming the key, not a
failure deep in a trial. A part added to a registry is configurable without a change here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from ecg_tune.errors import ConfigError, validation_message
from ecg_tune.models import MODELS
from ecg_tune.registry import PartOptions, Registry
from ecg_tune.signal.augment import POLICIES
from ecg_tune.signal.transforms import TRANSFORMS

# The registries whose parts a config names, under the config key that names one.
PART_KEYS: dict[str, Registry[Any]] = {"model": MODELS, "transform": TRANSFORMS, "augmentation": POLICIES}


def part_option_fields() -> dict[str, FieldInfo]:
    """Every config key a registered part reads (read at call time: parts may be added later)."""
    fields: dict[str, FieldInfo] = {}
    for key, registry in PART_KEYS.items():
        for name, info in registry.option_fields().items():
            if name in fields or name in TrainConfig.model_fields:
                raise ConfigError(f"{key} option {name!r} is also declared elsewhere; share one definition")
            fields[name] = info
    return fields


class TrainConfig(BaseModel):
    """One point of the search space: parts, input pipeline and optimiser settings, and the
    options of every registered part (read them through `options_for`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    # parts, by registry name
    model: str = "simple_cnn"
    transform: str = "none"
    augmentation: str = "all"

    # input pipeline
    normalisation: Literal["zscore", "none"] = "zscore"
    # None: the median recording length of the training data (9000 for CinC 2017).
    input_length: int | None = None
    fit: Literal["pad", "crop"] = "pad"

    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weighting: Literal["none", "balanced"] = "none"
    # plateau: ReduceLROnPlateau on val_loss; cosine: from lr down to lr * cosine_floor over the
    # epochs, one rate per epoch (training/loop.py)
    lr_scheduler: Literal["none", "plateau", "cosine"] = "none"
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    cosine_floor: float = 0.01
    # > 0: validate and deliver an exponential moving average of the weights, updated after every
    # step with this decay (training/loop.py); 0: the trained weights themselves
    ema_decay: float = 0.0
    early_stop_patience: int = 0  # 0: train all epochs
    # the training steps' precision: bf16 autocast, fp32, or auto: bf16 where the device has fast
    # bf16 and a few timed steps show the model gains from it (training/precision.py)
    precision: Literal["fp32", "bf16", "auto"] = "auto"
    # evaluation: windows of input_length over each record, overlapping by this fraction
    window_overlap: float = 0.5
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _part_options(cls, values: Any) -> Any:
        """Check every key is known and fill in the parts' options with their own models."""
        if not isinstance(values, dict):
            return values
        options = part_option_fields()
        for key in values:
            if key not in cls.model_fields and key not in options:
                raise ValueError(f"{key}: unknown key")
        chosen: dict[str, Any] = {}
        declared = {registry.options_class(name) for registry in PART_KEYS.values() for name in registry.names()}
        for options_class in sorted(declared, key=lambda c: c.__qualname__):  # each declaration once
            try:
                chosen.update(options_class.model_validate(values).model_dump())
            except ValidationError as exc:
                raise ValueError(validation_message(exc)) from None
        own = {key: value for key, value in values.items() if key in cls.model_fields}
        return {**own, **{key: chosen[key] for key in options}}

    @field_validator("model", "transform", "augmentation")
    @classmethod
    def _registered(cls, value: str, info: Any) -> str:
        PART_KEYS[info.field_name].get(value)
        return value

    @model_validator(mode="after")
    def _ranges(self) -> TrainConfig:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.input_length is not None and self.input_length < 16:
            raise ValueError(f"input_length must be at least 16 samples, got {self.input_length}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for key in ("weight_decay", "early_stop_patience", "plateau_patience"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must not be negative, got {getattr(self, key)}")
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"window_overlap must be in [0, 1), got {self.window_overlap}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        for key in ("cosine_floor", "ema_decay"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        return self

    def options_for(self, key: str) -> PartOptions:
        """The typed options of the part this config names under `key` (model, transform or
        augmentation)."""
        return PART_KEYS[key].options(getattr(self, key), self.to_dict())

    def part_options(self, key: str) -> dict[str, Any]:
        """The options of the part named under `key`, as plain values (for files and logs)."""
        return self.options_for(key).model_dump()

    def value(self, key: str) -> Any:
        """Any config value by key, part options included."""
        return self.to_dict()[key]

    def with_updates(self, **changes: Any) -> TrainConfig:
        """A validated copy with some values changed."""
        return make_config({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def config_keys() -> list[str]:
    """Every key a config (and so a search space) may set."""
    return [*TrainConfig.model_fields, *part_option_fields()]


def default_value(key: str) -> Any:
    """The value a config takes for `key` when it does not set it."""
    info = TrainConfig.model_fields.get(key) or part_option_fields()[key]
    return info.default


def is_whole_number(key: str) -> bool:
    """Whether `key` takes whole numbers (a search space must sample it as an int)."""
    info = TrainConfig.model_fields.get(key) or part_option_fields().get(key)
    return info is not None and info.annotation in (int, int | None)


def make_config(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """Validate a mapping into a TrainConfig; errors name `where` and the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(values).__name__}")
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {validation_message(exc)}") from None
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TrainConfig from YAML or JSON.

    A `best_config.json` written by the search (`{"config": {...}, "metrics": ...}`) is accepted
    too: its `config` part is used.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot parse config ({exc})") from None
    if values is None:
        values = {}
    if isinstance(values, dict) and isinstance(values.get("config"), dict):
        values = values["config"]
    if isinstance(values, dict):
        values = {**values, **(overrides or {})}
    return make_config(values, where=str(path))
