"""The seed notebook's SimpleCNN (`simple_cnn`) and its CNN+SVM variant (`cnn_svm`).

Both names build the same network: two unpadded kernel-3 convolutions (16 and 32 channels),
each followed by ReLU and max-pooling by 2, then Linear to `feature_size`, ReLU, Linear to the
classes, with He (kaiming) initialisation. `cnn_svm` trains exactly this network with its
linear head and declares an RBF SVM stage (models/svm.py) as its `fitted_head()`, which the
training loop fits on `features(x)`, the ReLU'd `feature_size` vector, after every epoch.

Options: `feature_size`; `cnn_svm` adds the SVM stage's (models/svm.py). The seed has no
dropout and fixed conv widths; keeping them fixed keeps the seed's results reproducible.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from ecg_tune.errors import ConfigError
from ecg_tune.models.base import MODELS, EcgModel
from ecg_tune.models.svm import SVMOptions, SVMStage
from ecg_tune.registry import PartOptions

_KERNEL = 3
_CHANNELS = (16, 32)
# Shortest input the two unpadded convolutions can take: conv(5) -> 3, no pool, conv -> 1.
MIN_LENGTH = 5


class FeatureSizeOptions(PartOptions):
    feature_size: int = Field(64, ge=1)  # the penultimate layer (and the SVM's input)


@MODELS.register("simple_cnn")
class SimpleCNN(EcgModel):
    """Conv1d(C->16, k3), ReLU, MaxPool(2), Conv1d(16->32, k3), ReLU, MaxPool(2), flatten,
    Linear(-> feature_size), ReLU, [features] Linear(-> n_classes).

    The flattened size follows from `input_length`; a pool is left out (Identity) when it
    would shrink a length below what the next layer needs, so short inputs (e.g. a deep
    wavelet approximation of 96 samples) still build. For 9000 samples nothing is skipped.
    """

    Options: ClassVar[type[PartOptions]] = FeatureSizeOptions
    min_input_length = MIN_LENGTH

    def __init__(self, in_channels: int, input_length: int, n_classes: int, feature_size: int = 64):
        super().__init__(in_channels, input_length, n_classes)
        if input_length < MIN_LENGTH:
            raise ConfigError(
                f"{type(self).__name__} needs inputs of at least {MIN_LENGTH} samples, "
                f"got {input_length}"
            )
        c1, c2 = _CHANNELS
        length = input_length - (_KERNEL - 1)
        # The second conv needs >= 3 samples after the first pool.
        pool1 = length // 2 >= _KERNEL
        length = length // 2 if pool1 else length
        length -= _KERNEL - 1
        pool2 = length >= 2
        length = length // 2 if pool2 else length
        self.flat_dim = c2 * length
        self.conv = nn.Sequential(
            nn.Conv1d(in_channels, c1, _KERNEL),
            nn.ReLU(),
            nn.MaxPool1d(2) if pool1 else nn.Identity(),
            nn.Conv1d(c1, c2, _KERNEL),
            nn.ReLU(),
            nn.MaxPool1d(2) if pool2 else nn.Identity(),
        )
        self.fc = nn.Linear(self.flat_dim, feature_size)
        self.feature_dim = feature_size
        self.head = nn.Linear(feature_size, n_classes)
        self._he_init()

    def _he_init(self) -> None:
        # He init as in the seed: the weights feed ReLUs; zero biases.
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:  # every layer here has one
                    nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, fixed_length=True)
        return torch.relu(self.fc(self.conv(x).flatten(1)))


class CnnSvmOptions(FeatureSizeOptions, SVMOptions):
    pass


@MODELS.register("cnn_svm")
class CNNWithSVM(SimpleCNN):
    """SimpleCNN trained with its linear head; an SVM stage is then fitted on its features."""

    Options = CnnSvmOptions

    @classmethod
    def build(cls, in_channels: int, input_length: int, n_classes: int, options: PartOptions) -> CNNWithSVM:
        assert isinstance(options, CnnSvmOptions)  # the registry validated them with Options
        return cls(in_channels, input_length, n_classes, options.feature_size, svm=options)

    def __init__(self, in_channels: int, input_length: int, n_classes: int, feature_size: int = 64,
                 svm: SVMOptions | None = None) -> None:
        super().__init__(in_channels, input_length, n_classes, feature_size)
        self.svm_options = svm if svm is not None else SVMOptions()

    def fitted_head(self) -> SVMStage:
        """A new SVM stage with this model's svm_* options."""
        return SVMStage.from_options(self.svm_options)
