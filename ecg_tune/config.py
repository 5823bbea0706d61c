"""The typed training configuration: one `TrainConfig`, validated once where it enters.

Everything that trains (the `train` command, the Tune trainable, the refit, the benchmark) takes a
`TrainConfig`. Names of models, transforms, wavelets and augmentation policies are checked against
their registries here, so a typo is a one-line error naming the key, not a failure deep in a trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Union

import pywt
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ecg_tune.errors import ConfigError


class TrainConfig(BaseModel):
    """One point of the search space: model, input pipeline and optimiser settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # model
    model: str = "simple_cnn"
    feature_size: int = 64
    width: int = 32
    depth: int = 8
    dropout: float = 0.3
    # the SVM stage of cnn_svm
    svm_c: float = 1.0
    svm_gamma: Union[float, Literal["scale", "auto"]] = "scale"
    svm_max_train: int = 3000

    # input pipeline
    normalisation: Literal["zscore", "none"] = "zscore"
    # None: the median recording length of the training data (9000 for CinC 2017).
    input_length: int | None = None
    fit: Literal["pad", "crop"] = "pad"
    augmentation: str = "all"
    noise_std: float = 0.1
    transform: str = "none"
    wavelet: str = "db2"
    levels: int = 6
    wavelet_output: Literal["approx", "bands"] = "approx"
    fourier_log: bool = False

    # optimisation
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weighting: Literal["none", "balanced"] = "none"
    lr_scheduler: Literal["none", "plateau"] = "none"
    plateau_factor: float = 0.5
    plateau_patience: int = 3
    early_stop_patience: int = 0  # 0: train all epochs
    # evaluation: windows of input_length over each record, overlapping by this fraction
    window_overlap: float = 0.5
    seed: int = 0

    @field_validator("model", "transform", "augmentation")
    @classmethod
    def _registered(cls, value: str, info) -> str:
        # Imported here: the registries import this module's neighbours, not the other way.
        from ecg_tune.models import MODELS
        from ecg_tune.signal.augment import POLICIES
        from ecg_tune.signal.transforms import TRANSFORMS

        registry = {"model": MODELS, "transform": TRANSFORMS, "augmentation": POLICIES}[info.field_name]
        registry.get(value)
        return value

    @field_validator("wavelet")
    @classmethod
    def _discrete_wavelet(cls, value: str) -> str:
        if value not in pywt.wavelist(kind="discrete"):
            raise ValueError(f"{value!r} is not a discrete wavelet PyWavelets knows (e.g. db2, haar, sym4, coif1)")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> "TrainConfig":
        positive = ["feature_size", "width", "depth", "epochs", "batch_size", "levels", "svm_max_train"]
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.input_length is not None and self.input_length < 16:
            raise ValueError(f"input_length must be at least 16 samples, got {self.input_length}")
        for key in ("lr", "svm_c"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        for key in ("weight_decay", "noise_std", "early_stop_patience", "plateau_patience"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must not be negative, got {getattr(self, key)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.window_overlap < 1:
            raise ValueError(f"window_overlap must be in [0, 1), got {self.window_overlap}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        return self

    def with_updates(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some values changed."""
        return make_config({**self.model_dump(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def make_config(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """Validate a mapping into a TrainConfig; errors name `where` and the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(values).__name__}")
    try:
        return TrainConfig(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "config"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(f"{where}: {key}: {message}") from None
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
