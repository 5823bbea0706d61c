"""Batched input transforms: a (batch, length) float tensor in, (batch, channels, length) out.

This module owns the transforms a search config names under `transform` ("none", "wavelet",
"fourier"), their registry (`TRANSFORMS`) and `build_transform` (`max_wavelet_level` and
`feasible_levels`, signal/dwt.py's, are importable from here too). Every
transform is a `torch.nn.Module` whose forward uses torch ops only, so it runs on whatever device
the batch is on (its operators are non-persistent buffers: `.to(device)` moves them, and they are
not written into checkpoints because they are rebuilt from the config).

A transform declares the config keys it reads as its `Options` (see ecg_tune/registry.py), is
built from them by `build(input_length, options)`, and says through `option_limits` how far an
integer option may go for a given input length (the wavelet's levels), which is how a search
space is fitted to the data without the search knowing any transform by name. A new transform is
one module-level class here (or in a module of its own) registered in `TRANSFORMS`.

The wavelet transform's operator (pywt.wavedec's coefficients as one linear map, derived and
checked once per input length, wavelet and level) is built in signal/dwt.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import pywt
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from ecg_tune.errors import ConfigError
from ecg_tune.registry import NoOptions, PartOptions, Registry
from ecg_tune.signal.dwt import (
    aligned_index,
    discrete_wavelet,
    feasible_levels,
    max_wavelet_level,
    wavelet_plan,
    wavelet_problem,
)

__all__ = [
    "TRANSFORMS",
    "BatchTransform",
    "IdentityTransform",
    "WaveletTransform",
    "FourierTransform",
    "build_transform",
    "feasible_levels",
    "max_wavelet_level",
]

WAVELET_OUTPUTS = ("approx", "bands")


class BatchTransform(nn.Module):
    """Base class: maps a (B, input_length) batch to a (B, *output_shape) batch.

    `output_shape` is (channels, length) for the `input_length` given at construction. Inputs of
    any other length are refused with a ValueError, since the operators are built for one length.

    A subclass declares its config keys as `Options` and, when an option's usable range depends
    on the input length, names the options that range also depends on in `limited_by` and
    overrides `option_limits`.
    """

    Options: ClassVar[type[PartOptions]] = NoOptions
    # Integer options whose largest usable value depends on the input length (option_limits),
    # and the other options that limit reads: a search space chooses those first.
    limited_options: ClassVar[tuple[str, ...]] = ()
    limited_by: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def build(cls, input_length: int, options: PartOptions) -> BatchTransform:
        """The transform for `input_length`-sample inputs with these (validated) options."""
        return cls(input_length, **options.model_dump())

    @classmethod
    def option_limits(cls, input_length: int, options: Mapping[str, Any], min_output: int) -> dict[str, int]:
        """The largest usable value of each integer option that has one, for this input length,
        the other options in `options`, and an output of at least `min_output` samples."""
        return {}

    def __init__(self, input_length: int) -> None:
        super().__init__()
        if isinstance(input_length, bool) or not isinstance(input_length, (int, np.integer)):
            raise ConfigError(f"input_length={input_length!r} must be an integer")
        if input_length < 1:
            raise ConfigError(f"input_length={input_length} must be at least 1")
        self.input_length = int(input_length)
        self.output_shape: tuple[int, int] = (1, self.input_length)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.input_length:
            raise ValueError(
                f"{type(self).__name__} expects a (batch, {self.input_length}) tensor, "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"input_length={self.input_length}, output_shape={self.output_shape}"


TRANSFORMS: Registry[type[BatchTransform]] = Registry("transform")


@TRANSFORMS.register("none")
class IdentityTransform(BatchTransform):
    """The raw signal as one channel: (B, L) -> (B, 1, L), a view (no copy)."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return x.unsqueeze(1)


class FourierOptions(PartOptions):
    fourier_log: bool = False  # log1p of the magnitude spectrum


@TRANSFORMS.register("fourier")
class FourierTransform(BatchTransform):
    """Magnitude spectrum |rfft(x)|: (B, L) -> (B, 1, L // 2 + 1); `log=True` gives log1p of it.

    log1p keeps zero at zero and compresses the large low-frequency (baseline) peaks that would
    otherwise dominate the input scale.
    """

    Options = FourierOptions

    @classmethod
    def build(cls, input_length: int, options: PartOptions) -> FourierTransform:
        assert isinstance(options, FourierOptions)
        return cls(input_length, log=options.fourier_log)

    def __init__(self, input_length: int, *, log: bool = False) -> None:
        super().__init__(input_length)
        if not isinstance(log, (bool, np.bool_)):
            raise ConfigError(f"fourier_log={log!r} must be true or false")
        self.log = bool(log)
        self.output_shape = (1, self.input_length // 2 + 1)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        if not x.is_floating_point():
            x = x.float()
        coeffs = torch.fft.rfft(x, dim=-1)
        if x.requires_grad and torch.is_grad_enabled():
            spectrum = coeffs.abs()  # differentiable everywhere torch defines it
            if self.log:
                spectrum = torch.log1p(spectrum)
        else:
            # sqrt(re^2 + im^2) in two real ops: ~4x faster than complex abs() here (which
            # guards against overflow the magnitudes of float signals never approach).
            spectrum = torch.addcmul(coeffs.real.square(), coeffs.imag, coeffs.imag).sqrt_()
            if self.log:
                spectrum.log1p_()
        return spectrum.unsqueeze(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, log={self.log}"


# ----------------------------------------------------------------------------------------------
# Wavelet module


class WaveletOptions(PartOptions):
    wavelet: str = "db2"  # a discrete mother wavelet pywt knows
    levels: int = Field(6, ge=1)  # decomposition depth
    wavelet_output: Literal["approx", "bands"] = "approx"

    @field_validator("wavelet")
    @classmethod
    def _discrete(cls, value: str) -> str:
        problem = wavelet_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r} {problem}")
        return value


@TRANSFORMS.register("wavelet")
class WaveletTransform(BatchTransform):
    """Discrete wavelet decomposition, equal to pywt.wavedec(x, wavelet, "symmetric", levels).

    wavelet_output="approx": the approximation coefficients cA_L as one channel,
    (B, 1, dwt_coeff_len applied L times), e.g. 143 values for db2, level 6, 9000 samples.

    wavelet_output="bands": every band as a channel, in pywt order cA_L, cD_L, ..., cD_1, brought
    to one time-aligned length by nearest-neighbour upsampling onto cD_1's grid: each coefficient
    of a band with stride 2**j is repeated 2**(j - 1) times, shifted so that it sits nearest its
    own support centre in time (so for long filters the channels stay aligned, not just start
    together), and the grid is extended at either end until every coefficient of every band
    appears at least once: nothing is trimmed, so the layout is lossless; positions beyond a
    band's first or last coefficient repeat that coefficient. Output position i stands for cD_1
    position i + grid_start (grid_start <= 0 is the extension at the start, 0 for db2 and haar),
    i.e. input time about 2 * (i + grid_start). `band_index[c, i]` gives the coefficient shown
    at position i of channel c and `split_bands` undoes the layout.
    """

    Options = WaveletOptions
    limited_options = ("levels",)
    limited_by = ("wavelet",)
    # Buffers registered in __init__, declared for the type checker.
    edge_left: Tensor
    edge_right: Tensor
    band_index: Tensor | None
    _gather: Tensor | None

    @classmethod
    def option_limits(cls, input_length: int, options: Mapping[str, Any], min_output: int) -> dict[str, int]:
        wavelet = str(options.get("wavelet", WaveletOptions.model_fields["wavelet"].default))
        return {"levels": feasible_levels(input_length, wavelet, min_output)}

    def __init__(
        self,
        input_length: int,
        *,
        wavelet: str = "db2",
        levels: int = 6,
        wavelet_output: str = "approx",
    ) -> None:
        super().__init__(input_length)
        w = discrete_wavelet(wavelet)
        if wavelet_output not in WAVELET_OUTPUTS:
            raise ConfigError(
                f"wavelet_output={wavelet_output!r} must be one of {', '.join(WAVELET_OUTPUTS)}"
            )
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
            raise ConfigError(f"levels={levels!r} must be an integer")
        levels = int(levels)
        if levels < 1:
            raise ConfigError(f"levels={levels} must be at least 1")
        deepest = int(pywt.dwt_max_level(self.input_length, w.dec_len))
        if levels > deepest:
            raise ConfigError(
                f"levels={levels} is beyond the feasible maximum {deepest} for wavelet "
                f"{wavelet} on {self.input_length}-sample input"
            )
        self.wavelet, self.levels, self.wavelet_output = wavelet, levels, wavelet_output

        plan = wavelet_plan(self.input_length, wavelet, levels)
        bands = plan.bands if wavelet_output == "bands" else plan.bands[:1]
        self.band_names = [b.name for b in bands]
        self.band_lengths = [b.length for b in bands]

        as_tensor = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        n_left = sum(b.k_lo for b in bands)
        n_right = sum(b.length - b.k_lo - b.n_int for b in bands)
        # The approx output uses only cA_L's columns, which come first in the edge matrices.
        self._p_left = plan.left.shape[0] if n_left else 0
        self._p_right = plan.right.shape[0] if n_right else 0
        self.register_buffer("edge_left", as_tensor(plan.left[:, :n_left]), persistent=False)
        self.register_buffer("edge_right", as_tensor(plan.right[:, :n_right]), persistent=False)

        # Bands with the same stride (cA_L and cD_L) share one view of the input and one matrix
        # product; the others each have their own. Groups keep pywt's band order, so the
        # interiors land in the flat buffer band after band. Each member is (first block c,
        # interior length, first row in the group's filter matrix, Q, offset in the flat buffer).
        self._groups: list[tuple[int, list[tuple[int, int, int, int, int]]]] = []
        group_blocks: list[np.ndarray] = []
        offset = n_left
        for b in bands:
            if b.n_int == 0:
                continue
            if not self._groups or self._groups[-1][0] != b.stride:
                self._groups.append((b.stride, []))
                group_blocks.append(np.zeros((0, b.stride)))
            row = group_blocks[-1].shape[0]
            self._groups[-1][1].append((b.c, b.n_int, row, b.blocks.shape[1], offset))
            # Stored as (Q, stride): the product filter @ blocks^T then yields (Q, B, blocks),
            # so the shifted slices summed in forward are contiguous rows (measured faster than
            # blocks @ filter^T, whose (B, blocks, Q) result gives strided slices).
            group_blocks[-1] = np.concatenate([group_blocks[-1], b.blocks.T], axis=0)
            offset += b.n_int
        self._n_flat = offset + n_right
        self._max_stride = max([stride for stride, _ in self._groups], default=1)
        self._filters = [f"filters_{i}" for i in range(len(group_blocks))]
        for name, blocks in zip(self._filters, group_blocks, strict=False):
            self.register_buffer(name, as_tensor(blocks), persistent=False)

        if wavelet_output == "approx":
            self.register_buffer("band_index", None, persistent=False)
            self.register_buffer("_gather", None, persistent=False)
            self.output_shape = (1, bands[0].length)
            self.grid_start = 0
        else:
            # Flat layout produced by forward: [left rows of all bands, interior of each band,
            # right rows of all bands]; _gather picks the aligned output from it in one op.
            index, self.grid_start = aligned_index(plan)
            out_len = index.shape[1]
            total_int = sum(b.n_int for b in bands)
            flat = np.empty_like(index)
            lo = ii = ro = 0
            for c, b in enumerate(bands):
                k = index[c]
                n_r = b.length - b.k_lo - b.n_int
                flat[c] = np.where(
                    k < b.k_lo,
                    lo + k,
                    np.where(
                        k < b.k_lo + b.n_int,
                        n_left + ii + (k - b.k_lo),
                        n_left + total_int + ro + (k - b.k_lo - b.n_int),
                    ),
                )
                lo, ii, ro = lo + b.k_lo, ii + b.n_int, ro + n_r
            self.register_buffer("band_index", torch.as_tensor(index), persistent=False)
            self.register_buffer("_gather", torch.as_tensor(flat.reshape(-1)), persistent=False)
            self.output_shape = (len(bands), out_len)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        dtype = self.edge_left.dtype
        if x.dtype != dtype:
            x = x.to(dtype)
        batch, n = x.shape
        # Writing every piece into one preallocated buffer saves a concatenation, but out=
        # does not support autograd; a batch that needs gradients takes the functional path.
        functional = x.requires_grad and torch.is_grad_enabled()
        flat = None if functional else x.new_empty(batch, self._n_flat)
        pieces: list[Tensor] = []
        if self._p_left:
            left = x[:, : self._p_left] @ self.edge_left
            if functional:
                pieces.append(left)
            else:
                assert flat is not None  # preallocated when not functional
                flat[:, : left.shape[1]] = left
        # One plain matrix product per stride needs the rows of x cut into whole blocks: true
        # when n is a multiple of every stride; otherwise, with several strides, one zero-padded
        # copy of x serves them all (the padding only meets zero filter taps or unused blocks).
        # With a single stride (the approx output) a batched product on the ragged view is
        # cheaper than the copy.
        padded = n % self._max_stride == 0
        if not padded and len(self._groups) > 1:
            x_blocks = torch.cat([x, x.new_zeros(batch, -n % self._max_stride)], dim=1)
            padded = True
        else:
            x_blocks = x
        width = x_blocks.shape[1]
        for name, (stride, members) in zip(self._filters, self._groups, strict=False):
            filters = getattr(self, name)  # (sum of Q, stride)
            if padded:
                # A view for a contiguous batch; reshape copies a strided one.
                blocks = x_blocks.reshape(batch * (width // stride), stride)
                # (sum of Q, B, blocks): a GEMM with a long, cheap dimension.
                partial = torch.mm(filters, blocks.T).view(-1, batch, width // stride)
            else:
                n_blocks = n // stride
                blocks = x[:, : n_blocks * stride].reshape(batch, n_blocks, stride)
                partial = torch.matmul(filters, blocks.transpose(1, 2)).transpose(0, 1)
            for c, n_int, row, q_taps, offset in members:
                # Block q of the filter contributes to coefficient i from input block c + i + q.
                terms = [partial[row + q, :, c + q : c + q + n_int] for q in range(q_taps)]
                if functional:
                    pieces.append(sum(terms[1:], terms[0]))
                    continue
                assert flat is not None  # preallocated when not functional
                out = flat[:, offset : offset + n_int]
                if q_taps == 1:
                    out.copy_(terms[0])
                else:
                    torch.add(terms[0], terms[1], out=out)
                    for term in terms[2:]:
                        out.add_(term)
        if self._p_right:
            right = x[:, n - self._p_right :] @ self.edge_right
            if functional:
                pieces.append(right)
            else:
                assert flat is not None  # preallocated when not functional
                flat[:, self._n_flat - right.shape[1] :] = right
        if functional:
            flat = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
        assert flat is not None  # preallocated, or just concatenated
        if self._gather is None:
            return flat.unsqueeze(1)
        return flat.index_select(1, self._gather).view(batch, *self.output_shape)

    def split_bands(self, y: Tensor) -> list[Tensor]:
        """Undo the output layout: per-band coefficients (B, length_b) in pywt order."""
        if self.band_index is None:
            return [y[:, 0]]
        out = []
        for c, length in enumerate(self.band_lengths):
            # Position of each coefficient's first occurrence in its channel.
            first = torch.searchsorted(
                self.band_index[c], torch.arange(length, device=self.band_index.device)
            )
            out.append(y[:, c].index_select(1, first))
        return out

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, wavelet={self.wavelet!r}, levels={self.levels}, "
            f"wavelet_output={self.wavelet_output!r}"
        )


def build_transform(name: str, input_length: int, **options: Any) -> BatchTransform:
    """The transform registered as `name`, built for `input_length`-sample inputs.

    `options` are config keys: those the named transform does not read are ignored (a config
    carries every transform's options); unknown names and unusable values raise a one-line
    ConfigError.
    """
    cls = TRANSFORMS.get(name)
    return cls.build(input_length, TRANSFORMS.options(name, options))
