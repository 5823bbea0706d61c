"""Batched input transforms: a (batch, length) float tensor in, (batch, channels, length) out.

This module owns the transforms a search config names under `transform` ("none", "wavelet",
"fourier"), their registry (`TRANSFORMS`), `build_transform` and `max_wavelet_level`. Every
transform is a `torch.nn.Module` whose forward uses torch ops only, so it runs on whatever device
the batch is on (its operators are non-persistent buffers: `.to(device)` moves them, and they are
not written into checkpoints because they are rebuilt from the config).

A transform declares the config keys it reads as its `Options` (see ecg_tune/registry.py), is
built from them by `build(input_length, options)`, and says through `option_limits` how far an
integer option may go for a given input length (the wavelet's levels), which is how a search
space is fitted to the data without the search knowing any transform by name. A new transform is
one module-level class here (or in a module of its own) registered in `TRANSFORMS`.

The wavelet transform reproduces `pywt.wavedec(x, wavelet, mode="symmetric", level=levels)` for
any discrete wavelet pywt knows, without running pywt per batch. It relies on two facts:

* Every coefficient band is a linear function of the input. Away from the edges, band j (stride
  s = 2**j) is one composite FIR filter `g` of (F - 1)(s - 1) + 1 taps (F = filter length)
  applied every s samples: coefficient k = sum_t g[t] * x[s*k - (F - 2)(s - 1) + t]. `g` is the
  cascade of the level filters (each upsampled by the stride of the level before it).
* Only a handful of coefficients at each end (about F of them per band) read the symmetric
  extensions. Their exact rows are obtained once by running pywt itself on impulses at the first
  and last few hundred input positions, so the boundary handling is pywt's by construction.

The interior is computed in polyphase form: the input is cut into s-sample blocks and one small
matrix product with the filter cut the same way gives per-block partial sums, which Q (about F)
shifted slices add up. This costs about N*(F - 1) multiply-adds per band and sample, much less
than a strided conv1d with the long composite kernel (and measured several times faster). The
edge coefficients are two small dense products on the first / last input samples. Everything is
derived per (input_length, wavelet, levels), checked once against pywt on a random signal, and
cached per process. Deriving costs milliseconds for short filters (db2 level 6 on 9000 samples:
about 10 ms) and grows with filter length x depth (coif5 level 6: ~1.5 s; dmey level 7, where
nearly every coefficient is a boundary one: ~20 s).

Why not a library: against ptwt 1.0.1 (`ptwt.wavedec(x, w, mode="symmetric")`, the same
coefficients) on a 32 x 9000 float32 batch on 2 CPU cores, this operator is 11-26x faster for
the approx output (db2 level 6: 277k against 10.5k samples/s; 4-55x over the search space's
wavelets, levels 3-8 and lengths 3000-9000) and 1.05-3.9x faster for the bands output than
ptwt plus the same alignment gather (db2 level 6: 1.5-1.9x). Measured by `benchmark pipeline`
(docs/benchmarks.md, "DWT alone", 2026-11-29).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pywt
import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from ecg_tune.errors import ConfigError
from ecg_tune.registry import NoOptions, PartOptions, Registry

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

# Impulses per pywt call while deriving edge rows: bounds the scratch memory (chunk x N doubles).
_IMPULSE_CHUNK = 256


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
# Wavelet: validation and the cached linear-operator plan


def _wavelet_problem(wavelet: object) -> str | None:
    """Why `wavelet` cannot be decomposed with (None if it is a discrete pywt wavelet)."""
    if not isinstance(wavelet, str):
        return "must be a wavelet name such as 'db2'"
    if wavelet in pywt.wavelist(kind="discrete"):
        return None
    try:
        # Parametrised continuous names ("cmor1.5-1.0") are not in the list but construct;
        # a bare "cmor" constructs with a deprecation warning that is noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pywt.ContinuousWavelet(wavelet)
    except (ValueError, TypeError):
        return ("is not a discrete wavelet pywt knows (e.g. haar, db2, sym4, coif1, bior2.2; "
                "see pywt.wavelist(kind='discrete'))")
    return "is a continuous wavelet; the decomposition needs a discrete one (e.g. haar, db2, sym4, coif1, bior2.2)"


def _discrete_wavelet(wavelet: object) -> pywt.Wavelet:
    """The pywt wavelet named `wavelet`, or a one-line ConfigError naming the key."""
    problem = _wavelet_problem(wavelet)
    if problem is not None:
        raise ConfigError(f"wavelet={wavelet!r} {problem}")
    return pywt.Wavelet(wavelet)


def max_wavelet_level(input_length: int, wavelet: str) -> int:
    """Deepest feasible decomposition level (pywt.dwt_max_level) for this length and wavelet."""
    return int(pywt.dwt_max_level(int(input_length), _discrete_wavelet(wavelet).dec_len))


@dataclass(frozen=True)
class _BandPlan:
    """How one pywt band (cA_L or cD_j) is computed.

    Coefficients [0, k_lo) come from the left edge matrix, [k_lo, k_lo + n_int) from the
    polyphase interior (blocks c .. c + n_int + Q - 2 of size `stride`, filter `blocks` of shape
    (stride, Q)), and [k_lo + n_int, length) from the right edge matrix.
    """

    name: str
    length: int
    stride: int
    taps: int  # composite filter length (F - 1)(stride - 1) + 1
    k_lo: int
    n_int: int
    c: int
    blocks: np.ndarray  # (stride, Q) float64


@dataclass(frozen=True)
class _WaveletPlan:
    input_length: int
    wavelet: str
    levels: int
    filter_len: int
    bands: tuple[_BandPlan, ...]  # pywt order: cA_L, cD_L, ..., cD_1
    left: np.ndarray  # (p_left, n_left_rows) float64: columns = left rows of each band in order
    right: np.ndarray  # (p_right, n_right_rows) float64: applied to x[:, N - p_right:]


def _composite_filters(wavelet: pywt.Wavelet, levels: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per level j = 1..levels: (approximation, detail) composite filters in correlation order.

    pywt computes y[o] = sum_j f[j] * x[2o + 1 - j]; written as a correlation over
    x[2o - (F - 2) + t] its taps are f reversed. One more level correlates the previous band
    with the reversed filter at twice the stride, i.e. convolves the previous composite filter
    with the new one upsampled by the previous stride.
    """
    lo = np.asarray(wavelet.dec_lo, dtype=np.float64)[::-1]
    hi = np.asarray(wavelet.dec_hi, dtype=np.float64)[::-1]
    approx = np.ones(1)
    out = []
    for j in range(1, levels + 1):
        step = 2 ** (j - 1)

        def upsample(h: np.ndarray, step: int = step) -> np.ndarray:  # binds this level's stride
            u = np.zeros((len(h) - 1) * step + 1)
            u[::step] = h
            return u

        detail = np.convolve(upsample(hi), approx)
        approx = np.convolve(upsample(lo), approx)
        out.append((approx, detail))
    return out


def _band_plan(name: str, g: np.ndarray, stride: int, length: int, n: int, f: int) -> _BandPlan:
    s = stride
    shift = (f - 2) * (s - 1)  # coefficient k's first input sample is s*k - shift
    k_lo = min(-(-shift // s), length)  # first coefficient whose support starts at or after 0
    k_hi = n // s - 1  # last coefficient whose support ends at or before n - 1
    start = s * k_lo - shift
    c, d = divmod(start, s)
    q = -(-(d + len(g)) // s)
    padded = np.zeros(q * s)
    padded[d : d + len(g)] = g
    blocks = np.ascontiguousarray(padded.reshape(q, s).T)
    # Interior coefficients must be exact (support inside the signal) and must fit in the
    # n // s whole blocks the input view provides; the rest go to the right edge matrix.
    n_int = max(0, min(k_hi - k_lo + 1, n // s - q - c + 1))
    if n_int == 0:
        c, blocks = 0, np.zeros((s, 0))
    return _BandPlan(name, length, s, len(g), k_lo, n_int, c, blocks)


@functools.lru_cache(maxsize=64)
def _wavelet_plan(input_length: int, wavelet_name: str, levels: int) -> _WaveletPlan:
    """Derive (once per length, wavelet and level) the exact operator for pywt.wavedec."""
    wavelet = pywt.Wavelet(wavelet_name)
    plan = _derive_plan(input_length, wavelet, levels, exhaustive=False)
    if not _plan_matches_pywt(plan, wavelet):
        # Not expected (the support bounds below are tight but sufficient); the exhaustive
        # derivation probes every input position on the full length and cannot miss a tap.
        plan = _derive_plan(input_length, wavelet, levels, exhaustive=True)
        if not _plan_matches_pywt(plan, wavelet):
            raise RuntimeError(
                f"internal error: wavelet operator for {wavelet_name} level {levels} on "
                f"{input_length} samples differs from pywt"
            )
    for b in plan.bands:
        b.blocks.setflags(write=False)
    plan.left.setflags(write=False)
    plan.right.setflags(write=False)
    return plan


def _derive_plan(n: int, wavelet: pywt.Wavelet, levels: int, exhaustive: bool) -> _WaveletPlan:
    f = wavelet.dec_len
    composite = _composite_filters(wavelet, levels)
    lengths = {}
    length = n
    for j in range(1, levels + 1):
        length = pywt.dwt_coeff_len(length, f, "symmetric")
        lengths[j] = length
    specs = [(f"cA{levels}", composite[-1][0], levels)]
    specs += [(f"cD{j}", composite[j - 1][1], j) for j in range(levels, 0, -1)]
    bands = tuple(_band_plan(name, g, 2**j, lengths[j], n, f) for name, g, j in specs)
    levels_of = [levels] + list(range(levels, 0, -1))

    # Input samples the edge rows read. Left rows (k < k_lo) read directly at most up to
    # stride*k_lo - 1; the samples the symmetric folds pull in lie below that. Right rows read
    # from their first row's support start to the end. Checked tight over wavelets x lengths x
    # levels, and guarded by the pywt comparison in _wavelet_plan.
    shift = lambda b: (f - 2) * (b.stride - 1)  # noqa: E731
    p_left = min(n, max(b.stride * b.k_lo for b in bands))
    p_right = min(n, max(n - (b.stride * (b.k_lo + b.n_int) - shift(b)) for b in bands))
    if exhaustive:
        p_left = p_right = n
    left_cols = np.cumsum([0] + [b.k_lo for b in bands])
    right_cols = np.cumsum([0] + [b.length - b.k_lo - b.n_int for b in bands])
    left = np.zeros((p_left, left_cols[-1]))
    right = np.zeros((p_right, right_cols[-1]))

    # Edge rows as impulse responses. They do not depend on the signal's middle, so the probes
    # run on a shorter signal whose length differs from n by a multiple of 2**levels: every band
    # length then differs by a whole number of coefficients and the right-edge rows are the
    # same rows, shifted (cost (p_left + p_right) x n becomes about (p_left + p_right)**2).
    step = 2**levels
    spare = 0 if exhaustive else max(0, (n - (p_left + p_right + 2 * step)) // step)
    n_probe = n - spare * step
    positions = np.union1d(np.arange(p_left), np.arange(n_probe - p_right, n_probe))
    for first in range(0, len(positions), _IMPULSE_CHUNK):
        chunk = positions[first : first + _IMPULSE_CHUNK]
        impulses = np.zeros((len(chunk), n_probe))
        impulses[np.arange(len(chunk)), chunk] = 1.0
        coeffs = pywt.wavedec(impulses, wavelet, mode="symmetric", level=levels, axis=-1)
        in_left = chunk < p_left
        in_right = chunk >= n_probe - p_right
        for i, (b, j, band) in enumerate(zip(bands, levels_of, coeffs, strict=False)):
            if b.k_lo:
                left[chunk[in_left], left_cols[i] : left_cols[i + 1]] = band[in_left, : b.k_lo]
            if right_cols[i + 1] > right_cols[i]:
                first_right = b.k_lo + b.n_int - spare * 2 ** (levels - j)
                rows = band[in_right, first_right:]
                at = chunk[in_right] - (n_probe - p_right)
                right[at, right_cols[i] : right_cols[i + 1]] = rows
    return _WaveletPlan(n, wavelet.name, levels, f, bands, left, right)


def _apply_plan_numpy(plan: _WaveletPlan, x: np.ndarray) -> list[np.ndarray]:
    """The plan evaluated in float64 numpy on one signal (the reference for the self-check)."""
    n = plan.input_length
    left = x[: plan.left.shape[0]] @ plan.left
    right = x[n - plan.right.shape[0] :] @ plan.right
    out, lo, ro = [], 0, 0
    for b in plan.bands:
        n_right = b.length - b.k_lo - b.n_int
        parts = [left[lo : lo + b.k_lo]]
        if b.n_int:
            m = n // b.stride
            z = x[: m * b.stride].reshape(m, b.stride) @ b.blocks
            parts.append(sum(z[b.c + q : b.c + q + b.n_int, q] for q in range(z.shape[1])))
        parts.append(right[ro : ro + n_right])
        lo, ro = lo + b.k_lo, ro + n_right
        out.append(np.concatenate(parts))
    return out


def _plan_matches_pywt(plan: _WaveletPlan, wavelet: pywt.Wavelet) -> bool:
    # A wrong support bound or interior range would silently give wrong coefficients; one
    # random signal through both paths costs about one wavedec and rules that out.
    x = np.random.default_rng(0).standard_normal(plan.input_length)
    ref = pywt.wavedec(x, wavelet, mode="symmetric", level=plan.levels)
    got = _apply_plan_numpy(plan, x)
    return all(
        r.shape == g.shape and np.allclose(g, r, rtol=1e-9, atol=1e-9 * np.abs(r).max())
        for r, g in zip(ref, got, strict=False)
    )


def _aligned_index(plan: _WaveletPlan) -> tuple[np.ndarray, int]:
    """Coefficient index per (band, output position) for the time-aligned "bands" layout.

    The output grid is cD1's: position p stands for time 2p + (3 - F)/2, the centre of the
    support of cD1[p]. Coefficient k of a band with stride s has its support centred at
    s*k + (s - 1)(3 - F)/2; each position takes the band's coefficient whose centre is nearest
    (ties to the later one), i.e. k = floor((4p + (F - 3)(s - 2) + s) / (2s)). So a band of
    stride s repeats each coefficient s/2 times (nearest-neighbour upsampling), shifted so that
    all channels line up in time. The grid is extended on both sides just far enough that every
    coefficient of every band appears at least once (lossless); beyond a band's first or last
    coefficient the position repeats that coefficient. Returns the (bands, positions) index and
    the first position p (<= 0).
    """
    f = plan.filter_len
    offsets = [(f - 3) * (b.stride - 2) + b.stride for b in plan.bands]
    p_first = min(
        [0] + [(2 * b.stride - e - 1) // 4 for b, e in zip(plan.bands, offsets, strict=False)]
    )  # last p where every band is still at its coefficient 0
    p_last = max(
        -(-((b.length - 1) * 2 * b.stride - e) // 4) for b, e in zip(plan.bands, offsets, strict=False)
    )  # first p where every band has reached its last coefficient
    positions = np.arange(p_first, p_last + 1)
    index = np.stack(
        [
            np.clip((4 * positions + e) // (2 * b.stride), 0, b.length - 1)
            for b, e in zip(plan.bands, offsets, strict=False)
        ]
    )
    return index, int(p_first)


def _approx_length(input_length: int, wavelet: str, level: int) -> int:
    length, filter_length = input_length, pywt.Wavelet(wavelet).dec_len
    for _ in range(level):
        length = pywt.dwt_coeff_len(length, filter_length, "symmetric")
    return length


def feasible_levels(input_length: int, wavelet: str, min_output: int) -> int:
    """The deepest level pywt allows whose approximation still has `min_output` samples
    (at least 1: only wavelets far longer than the input reach 0)."""
    level = max_wavelet_level(input_length, wavelet)
    while level > 1 and _approx_length(input_length, wavelet, level) < min_output:
        level -= 1
    return max(1, level)


# ----------------------------------------------------------------------------------------------
# Wavelet module


class WaveletOptions(PartOptions):
    wavelet: str = "db2"  # a discrete mother wavelet pywt knows
    levels: int = Field(6, ge=1)  # decomposition depth
    wavelet_output: Literal["approx", "bands"] = "approx"

    @field_validator("wavelet")
    @classmethod
    def _discrete(cls, value: str) -> str:
        problem = _wavelet_problem(value)
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
        w = _discrete_wavelet(wavelet)
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

        plan = _wavelet_plan(self.input_length, wavelet, levels)
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
            index, self.grid_start = _aligned_index(plan)
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
