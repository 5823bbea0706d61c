"""A multi-scale 1-D residual network for long, variable-length recordings (`resnet1d`).

In the style of Hannun et al. (2019): pre-activation residual blocks (BN -> ReLU -> conv),
dropout between a block's two convolutions, downsampling by 2 in every other block (strided
conv on the residual path, max-pooling on the shortcut) and channels doubling every four
blocks. Changes for this project:

- each convolution is multi-scale: three parallel branches share the output channels and are
  concatenated: kernel 3, kernel 9, and kernel 9 dilated by 2 (span 17). At the first blocks'
  75 Hz that is 40, 120 and 230 ms: a QRS complex, a P wave, the P-QRS interval, seen at once
  without stacking many layers. (A dense kernel 19 would give the same span but cost about
  2.7x per step here: oneDNN's CPU convolutions slow down sharply beyond kernel 13.)
- the head pools globally (average and max, concatenated) so any input length works: crops
  for training, whole records or windows of any length at evaluation;
- the dropout inside blocks is channel dropout (Dropout1d): neighbouring samples of a conv
  feature map are strongly correlated, so dropping single samples regularises little, and on
  a CPU drawing a mask per sample cost about 10 % of a training step.

To stay cheap on a CPU, a strided stem convolution (kernel 15, stride 4) first brings the
signal to a quarter of its rate (300 Hz -> 75 Hz for CinC 2017). At the defaults (width 32,
depth 8) a 9000-sample input ends at 141 steps of 64 channels; 0.27 M parameters.

Options: `width` = channels of the stem and the first four blocks (doubling every four blocks,
at most 8 x width), `depth` = number of residual blocks, `dropout` = channel dropout inside
blocks and dropout before the last Linear. The features are the pooled channels (2 x final
channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ecg_tune.models.base import MODELS, EcgModel, WidthOptions

# Branches of a multi-scale convolution as (kernel, dilation).
BRANCHES: tuple[tuple[int, int], ...] = ((3, 1), (9, 1), (9, 2))
_STEM_KERNEL = 15
STEM_STRIDE = 4
# Channels double every this many blocks, up to 8 x width (Hannun et al.: every 4 blocks,
# 32 -> 256); the cap keeps a deep search point from reaching thousands of channels.
_GROW_EVERY = 4
_MAX_DOUBLINGS = 3


def _split_channels(total: int, parts: int) -> list[int]:
    """`total` channels shared by `parts` branches as evenly as possible (no empty branch)."""
    sizes = [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
    return [s for s in sizes if s > 0]


class MultiScaleConv1d(nn.Module):
    """Parallel 'same'-padded convolutions with different kernels, concatenated on channels.

    With stride 2 every branch gives ceil(L / 2) samples (odd kernels, padding d * (k // 2)),
    which is also what the shortcut's ceil-mode max-pool gives, so the residual sum always
    lines up.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1,
                 branches: tuple[tuple[int, int], ...] = BRANCHES):
        super().__init__()
        sizes = _split_channels(c_out, len(branches))
        self.branches = nn.ModuleList(
            nn.Conv1d(c_in, c, k, stride=stride, padding=d * (k // 2), dilation=d, bias=False)
            for c, (k, d) in zip(sizes, branches, strict=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class ResidualBlock(nn.Module):
    """[BN -> ReLU ->] MSConv(stride) -> BN -> ReLU -> Dropout1d -> MSConv, plus the shortcut.

    The first block skips the leading BN-ReLU because the stem has just applied them.
    Shortcut: max-pool 2 when downsampling, 1x1 conv when the channel count changes.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float, preact: bool = True):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm1d(c_in), nn.ReLU()) if preact else nn.Identity()
        self.conv1 = MultiScaleConv1d(c_in, c_out, stride)
        self.mid = nn.Sequential(nn.BatchNorm1d(c_out), nn.ReLU(), nn.Dropout1d(dropout))
        self.conv2 = MultiScaleConv1d(c_out, c_out)
        self.stride = stride
        self.project = nn.Conv1d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.stride > 1:
            shortcut = F.max_pool1d(shortcut, self.stride, self.stride, ceil_mode=True)
        shortcut = self.project(shortcut)
        return shortcut + self.conv2(self.mid(self.conv1(self.pre(x))))


class ResNetOptions(WidthOptions):
    depth: int = Field(8, ge=1)  # residual blocks
    dropout: float = Field(0.3, ge=0.0, lt=1.0)


@MODELS.register("resnet1d")
class ResNet1d(EcgModel):
    """Stem -> `depth` residual blocks -> BN-ReLU -> [avg | max] global pooling -> Dropout ->
    Linear. `features(x)` is the pooled vector (2 x final channels), for any length.

    Downsampling is planned from `input_length` so that nothing is ever pooled below length
    2: short inputs (e.g. 26 wavelet coefficients) get fewer strided blocks. Inputs of other
    lengths than `input_length` still work (ceil-mode pooling, global head).
    """

    Options = ResNetOptions

    def __init__(
        self,
        in_channels: int,
        input_length: int,
        n_classes: int,
        width: int = 32,
        depth: int = 8,
        dropout: float = 0.3,
    ):
        super().__init__(in_channels, input_length, n_classes)
        # The stem brings the signal to a quarter of its rate with one strided conv (cheaper
        # than conv + max-pool, whose pooling with indices is slow at full length on a CPU);
        # short inputs get a smaller stride so the length stays >= 2.
        stem_stride = next(s for s in (STEM_STRIDE, 2, 1) if s == 1 or -(-input_length // s) >= 2)
        length = -(-input_length // stem_stride)
        self.stem = nn.Sequential(
            nn.Conv1d(
                in_channels, width, _STEM_KERNEL, stride=stem_stride,
                padding=_STEM_KERNEL // 2, bias=False,
            ),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
        blocks = []
        c_in = width
        for i in range(depth):
            c_out = width * 2 ** min(i // _GROW_EVERY, _MAX_DOUBLINGS)
            # Downsample in blocks 0, 2, 4, ... while the length allows it.
            stride = 2 if (i % 2 == 0 and length >= 2) else 1
            blocks.append(ResidualBlock(c_in, c_out, stride, dropout, preact=i > 0))
            c_in, length = c_out, -(-length // stride)
        self.blocks = nn.Sequential(*blocks)
        self.post = nn.Sequential(nn.BatchNorm1d(c_in), nn.ReLU())
        self.final_length = length  # at input_length; for tests and cost estimates
        self.feature_dim = 2 * c_in
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, n_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv1d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x, fixed_length=False)
        h = self.post(self.blocks(self.stem(x)))
        # Average pooling summarises rhythm over the whole record; max pooling keeps a rare
        # event (one ectopic beat) that an average would dilute.
        return torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)
