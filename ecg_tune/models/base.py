"""What every classifier network is: the `EcgModel` interface, the `MODELS` registry, `build_model`.

A model module imports `EcgModel` and `MODELS` from here and registers its subclass under the name
used in config and search-space files; the package (models/__init__.py) imports every model module
so that they are registered. A model declares the config keys it reads as its `Options` (a
`PartOptions` model: types, defaults, bounds), the shortest input it accepts as
`min_input_length`, and is built by `build(in_channels, input_length, n_classes, options)`; a
head it fits rather than trains it declares by `fitted_head()` (models/head.py). The training
loop never special-cases a name.

Input is always a float tensor (B, C, L): C = 1 for the raw, Fourier and wavelet-approximation
transforms, C = levels + 1 for wavelet bands. Models whose classifier head is a flattened
feature map (simple_cnn, cnn_svm, ecg_cnn) are built for one `input_length`; resnet1d pools
globally and accepts any length.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from ecg_tune.errors import ConfigError
from ecg_tune.models.head import FittedHead
from ecg_tune.registry import NoOptions, PartOptions, Registry

__all__ = ["EcgModel", "MODELS", "WidthOptions", "build_model", "model_names"]


class WidthOptions(PartOptions):
    """`width`, read by more than one model (one definition, so they cannot disagree)."""

    width: int = Field(32, ge=1)  # channels; each model says how it uses them


class EcgModel(nn.Module):
    """Base class of every network: `forward(x) = head(features(x))`.

    Subclasses set `feature_dim` and a `head` module (what follows the penultimate
    representation, e.g. dropout + the last Linear) and implement `features`.

    Attributes:
        needs_data_init: True when the model fits something to training data before training
            (minirocket: its biases and feature scaling): the training loop then calls
            `initialise` once, before the first epoch of a run that is not resumed, with the
            inputs of a fixed, seeded sample of training records. Class attribute, False by
            default. What `initialise` fits must live in the state dict (persistent buffers),
            so that checkpoints and bundles restore it.
        feature_dim: size F of `features(x)`.
        in_channels, input_length, n_classes: the sizes the model was built for.
    """

    needs_data_init: ClassVar[bool] = False
    Options: ClassVar[type[PartOptions]] = NoOptions
    # The shortest input (samples after the transform) the model can be built for.
    min_input_length: ClassVar[int] = 1
    head: nn.Module  # set by the subclass, after its feature layers (keeps parameter order)

    @classmethod
    def build(cls, in_channels: int, input_length: int, n_classes: int, options: PartOptions) -> EcgModel:
        """The model for these sizes and (validated) options; the default passes every option
        to the constructor by name."""
        return cls(in_channels, input_length, n_classes, **options.model_dump())

    def __init__(self, in_channels: int, input_length: int, n_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_length = input_length
        self.n_classes = n_classes
        self.feature_dim = 0  # set by the subclass

    def initialise(self, inputs: torch.Tensor) -> None:
        """Fit what the model takes from training data, from `inputs` (N, C, L): the transform's
        output for a sample of training records. Called only when `needs_data_init`; the
        default fits nothing."""

    def fitted_head(self) -> FittedHead | None:
        """A new, unfitted instance of the head this model fits on its `features` rather than
        trains by gradient (models/head.py), or None: every part is trained by gradient (the
        default). May depend on the model's options (minirocket's `rocket_head`)."""
        return None

    def restore_head(self, blob: bytes | None) -> FittedHead | None:
        """This model's fitted head as `FittedHead.to_bytes` saved it; None without bytes or
        without such a head. Raises ValueError (one line) for bytes that are not such output."""
        head = self.fitted_head()
        return head.load_bytes(blob) if head is not None and blob else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> (B, feature_dim): the penultimate representation."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, L) -> logits (B, n_classes)."""
        return self.head(self.features(x))

    def _check_input(self, x: torch.Tensor, fixed_length: bool) -> None:
        # A shape mistake otherwise surfaces as an opaque matmul error deep in the head.
        if x.dim() != 3 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects input (B, {self.in_channels}, L), "
                f"got {tuple(x.shape)}"
            )
        if fixed_length and x.shape[2] != self.input_length:
            raise ValueError(
                f"{type(self).__name__} was built for length {self.input_length}, "
                f"got {x.shape[2]}"
            )


MODELS: Registry[type[EcgModel]] = Registry("model")


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


def build_model(name: str, in_channels: int, input_length: int, n_classes: int, **options: Any) -> EcgModel:
    """Build the registered model `name` for inputs (B, in_channels, input_length).

    `options` are config keys; those the model does not read are ignored. Raises ConfigError
    for an unknown name, bad options, or an input shorter than the model accepts.
    """
    cls = MODELS.get(name)
    typed = MODELS.options(name, options)
    length = _as_int("input_length", input_length, 1)
    if length < cls.min_input_length:
        raise ConfigError(f"model {name} needs inputs of at least {cls.min_input_length} samples, got {length}")
    return cls.build(_as_int("in_channels", in_channels, 1), length, _as_int("n_classes", n_classes, 2), typed)


def _as_int(key: str, value: object, minimum: int) -> int:
    # Search spaces hand over numpy integers, which are not `int`; bool is an int subclass,
    # but a True in a config file is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"model {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)
