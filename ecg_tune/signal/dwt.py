"""The discrete wavelet transform as an exact linear operator: pywt's coefficients, built once.

This module owns the DWT machinery behind the "wavelet" transform (signal/transforms.py): which
wavelet names are usable (`wavelet_problem`, `discrete_wavelet`), the pywt-compatible levels and
lengths (`max_wavelet_level`, `feasible_levels`), the per (input_length, wavelet, levels) operator
(`wavelet_plan`: composite filters, boundary rows, the polyphase interior, checked against pywt)
and the time-aligned layout of the "bands" output (`aligned_index`). It is numpy and pywt only;
the torch module that applies a plan per batch is `WaveletTransform` in signal/transforms.py.

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
from dataclasses import dataclass

import numpy as np
import pywt

from ecg_tune.errors import ConfigError

__all__ = [
    "BandPlan",
    "WaveletPlan",
    "aligned_index",
    "discrete_wavelet",
    "feasible_levels",
    "max_wavelet_level",
    "wavelet_plan",
    "wavelet_problem",
]

# Impulses per pywt call while deriving edge rows: bounds the scratch memory (chunk x N doubles).
_IMPULSE_CHUNK = 256


def wavelet_problem(wavelet: object) -> str | None:
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


def discrete_wavelet(wavelet: object) -> pywt.Wavelet:
    """The pywt wavelet named `wavelet`, or a one-line ConfigError naming the key."""
    problem = wavelet_problem(wavelet)
    if problem is not None:
        raise ConfigError(f"wavelet={wavelet!r} {problem}")
    return pywt.Wavelet(wavelet)


def max_wavelet_level(input_length: int, wavelet: str) -> int:
    """Deepest feasible decomposition level (pywt.dwt_max_level) for this length and wavelet."""
    return int(pywt.dwt_max_level(int(input_length), discrete_wavelet(wavelet).dec_len))


@dataclass(frozen=True)
class BandPlan:
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
class WaveletPlan:
    input_length: int
    wavelet: str
    levels: int
    filter_len: int
    bands: tuple[BandPlan, ...]  # pywt order: cA_L, cD_L, ..., cD_1
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


def _band_plan(name: str, g: np.ndarray, stride: int, length: int, n: int, f: int) -> BandPlan:
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
    return BandPlan(name, length, s, len(g), k_lo, n_int, c, blocks)


@functools.lru_cache(maxsize=64)
def wavelet_plan(input_length: int, wavelet_name: str, levels: int) -> WaveletPlan:
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


def _derive_plan(n: int, wavelet: pywt.Wavelet, levels: int, exhaustive: bool) -> WaveletPlan:
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
    # levels, and guarded by the pywt comparison in wavelet_plan.
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
    return WaveletPlan(n, wavelet.name, levels, f, bands, left, right)


def _apply_plan_numpy(plan: WaveletPlan, x: np.ndarray) -> list[np.ndarray]:
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


def _plan_matches_pywt(plan: WaveletPlan, wavelet: pywt.Wavelet) -> bool:
    # A wrong support bound or interior range would silently give wrong coefficients; one
    # random signal through both paths costs about one wavedec and rules that out.
    x = np.random.default_rng(0).standard_normal(plan.input_length)
    ref = pywt.wavedec(x, wavelet, mode="symmetric", level=plan.levels)
    got = _apply_plan_numpy(plan, x)
    return all(
        r.shape == g.shape and np.allclose(g, r, rtol=1e-9, atol=1e-9 * np.abs(r).max())
        for r, g in zip(ref, got, strict=False)
    )


def aligned_index(plan: WaveletPlan) -> tuple[np.ndarray, int]:
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
