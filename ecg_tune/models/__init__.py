"""The classifier networks: the `EcgModel` interface, the `MODELS` registry and `build_model`.

This package owns every trainable network and the SVM stage of `cnn_svm` (models/svm.py).
Each model module registers one builder under the name used in config and search-space files;
every builder has the same signature,

    builder(in_channels, input_length, n_classes, *, feature_size, width, depth, dropout)

and uses only the sizes that apply to it (its docstring says which), so the search space can
carry all four sizes for every model and the training loop never special-cases a name.

Input is always a float tensor (B, C, L): C = 1 for the raw, Fourier and wavelet-approximation
transforms, C = levels + 1 for wavelet bands. Models whose classifier head is a flattened
feature map (simple_cnn, cnn_svm, ecg_cnn) are built for one `input_length`; resnet1d pools
globally and accepts any length.
"""

from __future__ import annotations

import numbers
from typing import Callable, ClassVar

import torch
from torch import nn

from ecg_tune.errors import ConfigError
from ecg_tune.registry import Registry

__all__ = ["EcgModel", "MODELS", "ModelBuilder", "build_model", "model_names"]


class EcgModel(nn.Module):
    """Base class of every network: `forward(x) = head(features(x))`.

    Subclasses set `feature_dim` and a `head` module (what follows the penultimate
    representation, e.g. dropout + the last Linear) and implement `features`.

    Attributes:
        uses_svm: True when the training loop must fit an `SVMStage` on `features` after
            training the network (cnn_svm); class attribute, False by default.
        feature_dim: size F of `features(x)`.
        in_channels, input_length, n_classes: the sizes the model was built for.
    """

    uses_svm: ClassVar[bool] = False
    head: nn.Module  # set by the subclass, after its feature layers (keeps parameter order)

    def __init__(self, in_channels: int, input_length: int, n_classes: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.input_length = input_length
        self.n_classes = n_classes
        self.feature_dim = 0  # set by the subclass

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


ModelBuilder = Callable[..., EcgModel]
MODELS: Registry[ModelBuilder] = Registry("model")

# The model modules import EcgModel and MODELS from this package and register themselves, so
# these imports must come after the definitions above (a partially initialised package is
# enough for them). Adding a model is one module plus one line here.
from ecg_tune.models import ecg_cnn, resnet1d, simple_cnn  # noqa: E402,F401


def model_names() -> list[str]:
    """The registered model names, sorted."""
    return MODELS.names()


def build_model(
    name: str,
    in_channels: int,
    input_length: int,
    n_classes: int,
    *,
    feature_size: int = 64,
    width: int = 32,
    depth: int = 8,
    dropout: float = 0.3,
) -> EcgModel:
    """Build the registered model `name` for inputs (B, in_channels, input_length).

    Raises ConfigError for an unknown name or sizes no model can use.
    """
    builder = MODELS.get(name)
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not (
        0.0 <= float(dropout) < 1.0
    ):
        raise ConfigError(f"model dropout must be a number in [0, 1), got {dropout!r}")
    return builder(
        _as_int("in_channels", in_channels, 1),
        _as_int("input_length", input_length, 1),
        _as_int("n_classes", n_classes, 2),
        feature_size=_as_int("feature_size", feature_size, 1),
        width=_as_int("width", width, 1),
        depth=_as_int("depth", depth, 1),
        dropout=float(dropout),
    )


def _as_int(key: str, value: object, minimum: int) -> int:
    # Search spaces hand over numpy integers, which are not `int`; bool is an int subclass,
    # but a True in a config file is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"model {key} must be an integer >= {minimum}, got {value!r}")
    return int(value)
