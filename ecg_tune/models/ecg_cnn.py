"""The second seed notebook's ECGCNN (`ecg_cnn`).

Four blocks of Conv1d (length-preserving padding) + BatchNorm + ReLU + MaxPool(2) with
32, 64, 128, 256 channels and kernels 5, 5, 3, 3, then flatten -> Linear(512) -> ReLU ->
Dropout(0.5) -> Linear(128) -> ReLU -> [features] -> Dropout(0.3) -> Linear(n_classes).

Options: `width` scales the four channel counts by width / 32 (the default 32 gives the seed's
network exactly). The 512/128 hidden sizes and the 0.5/0.3 dropouts are the seed's and stay
fixed so its results can be reproduced.

Cost note: the first Linear sees 256 * L / 16 inputs, so at 9000 samples it holds about 74 M
weights (most of the model); on short transforms (wavelet approximation) it is small.
"""

from __future__ import annotations

import torch
from torch import nn

from ecg_tune.models.base import MODELS, EcgModel, WidthOptions

_BASE_CHANNELS = (32, 64, 128, 256)
_KERNELS = (5, 5, 3, 3)
_HIDDEN = (512, 128)
_DROPOUTS = (0.5, 0.3)


@MODELS.register("ecg_cnn")
class ECGCNN(EcgModel):
    """The seed's ECGCNN, built for one input length (the flattened size depends on it).

    A block's pool is left out when the length reaching it is below 2, so inputs of any
    length >= 1 build; at 9000 samples every pool is used (9000 -> 562).
    """

    Options = WidthOptions

    def __init__(self, in_channels: int, input_length: int, n_classes: int, width: int = 32):
        super().__init__(in_channels, input_length, n_classes)
        channels = [max(1, round(c * width / 32)) for c in _BASE_CHANNELS]
        blocks: list[nn.Module] = []
        c_in, length = in_channels, input_length
        for c_out, k in zip(channels, _KERNELS, strict=False):
            pool = length >= 2
            blocks += [
                nn.Conv1d(c_in, c_out, k, padding=k // 2),
                nn.BatchNorm1d(c_out),
                nn.ReLU(),
                nn.MaxPool1d(2) if pool else nn.Identity(),
            ]
            c_in, length = c_out, (length // 2 if pool else length)
        self.conv = nn.Sequential(*blocks)
        self.flat_dim = c_in * length
        h1, h2 = _HIDDEN
        self.fc = nn.Sequential(
            nn.Linear(self.flat_dim, h1),
            nn.ReLU(),
            nn.Dropout(_DROPOUTS[0]),
            nn.Linear(h1, h2),
            nn.ReLU(),
        )
        self.feature_dim = h2
        self.head = nn.Sequential(nn.Dropout(_DROPOUTS[1]), nn.Linear(h2, n_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, fixed_length=True)
        return self.fc(self.conv(x).flatten(1))
