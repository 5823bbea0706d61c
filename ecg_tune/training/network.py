"""A config -> the trainable network: input transform followed by the model, on one device.

The transform (none / wavelet / fourier) is the first layer of the network, so it runs on the
training device inside the step and travels with the model into the exported bundle. The trainable,
the refit and the benchmark all build their network here.
"""

from __future__ import annotations

import torch
from torch import nn

from ecg_tune.config import TrainConfig
from ecg_tune.models import EcgModel, build_model
from ecg_tune.signal.transforms import TRANSFORMS, BatchTransform


class Network(nn.Module):
    """transform -> model; takes (batch, input_length) signals, returns class logits."""

    def __init__(self, transform: BatchTransform, model: EcgModel, input_length: int) -> None:
        super().__init__()
        self.transform = transform
        self.model = model
        self.input_length = input_length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.inputs(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(self.inputs(x))

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The transform's output for a signal batch: what the model sees."""
        # The transform has no parameters and the signals need no gradient, so it runs outside
        # autograd, where the wavelet transform takes its fast path (about 3x faster here).
        with torch.no_grad():
            return self.transform(x)


def build_network(config: TrainConfig, input_length: int, n_classes: int) -> Network:
    """The network a config describes, for inputs of `input_length` samples: the transform and
    the model it names, each built from its own options."""
    transform = TRANSFORMS.get(config.transform).build(input_length, config.options_for("transform"))
    channels, length = transform.output_shape
    model = build_model(config.model, channels, length, n_classes, **config.part_options("model"))
    return Network(transform, model, input_length)
