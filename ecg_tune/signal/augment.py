"""Training-time augmentation of ECG batches, on torch tensors, on the batch's own device.

This module owns:
- `POLICIES`: the augmentation policy registry (name -> the set of ops it applies). Each policy
  applies exactly the ops its name says; the seed notebook's `none` still added noise, shift
  and scale, and its `noise_only` / `scale_only` were not honoured.
- `AugmentOptions`: the config keys every policy reads (`noise_std`); `AugmentParams`: the
  strengths of the ops; `build_augmenter`: a policy's augmenter from a config's values.
- `BatchAugmenter`: warp -> fit to `input_length` -> circular shift -> noise -> amplitude scale,
  for a whole (B, Lmax) batch at once; `Draws`: one batch's random choices.
- `fit_to_length`: the deterministic fit (zero pad at the end / centre trim) for evaluation.

Semantics, per record of true length L (x is zero beyond L), N = input_length:
1. warp: factor f ~ U[1 - warp, 1 + warp]; the record becomes Lw = round(L * f) samples by
   linear interpolation with the end points kept (warped sample j sits at source position
   j * (L - 1) / (Lw - 1), i.e. `np.interp(np.linspace(0, L - 1, Lw), arange(L), x[:L])`).
2. fit: "pad" zero pads at the end or keeps the centred window (start (Lw - N) // 2);
   "crop" keeps a uniformly random window of N for Lw > N and zero pads shorter records.
3. shift: circular roll of the N-sample window by k ~ U{-m..m}, m = max(1, round(N * fraction))
   (output[i] = window[(i - k) mod N], as `torch.roll(window, k)`).
4. noise: noise_std * N(0, 1) on all N samples, padded zeros included, so where the record
   ends is not a free feature (docs: "Length leakage").
5. scale: the whole window (noise included) times a ~ U[scale_low, scale_high].

The tensor ops that apply a batch's draws (and why they are fast) are in signal/augment_ops.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from ecg_tune.errors import ConfigError
from ecg_tune.registry import PartOptions, Registry
from ecg_tune.signal.augment_ops import (
    Ramp,
    add_noise,
    check_batch,
    copy_windows,
    fit_to_length,
    shared_noise_bank,
    to_device,
    warp_fit_shift,
)

__all__ = [
    "FITS",
    "OPS",
    "POLICIES",
    "AugmentOptions",
    "AugmentParams",
    "BatchAugmenter",
    "build_augmenter",
    "Draws",
    "fit_to_length",
]

OPS = ("warp", "shift", "noise", "scale")
FITS = ("crop", "pad")



class AugmentOptions(PartOptions):
    """The config keys of every augmentation policy (the other strengths are fixed)."""

    noise_std: float = Field(0.1, ge=0.0)  # in units of the per-record normalised signal


POLICIES: Registry[frozenset[str]] = Registry("augmentation", default_options=AugmentOptions)
POLICIES.register("all")(frozenset(OPS))
POLICIES.register("warp_only")(frozenset({"warp"}))
POLICIES.register("shift_only")(frozenset({"shift"}))
POLICIES.register("noise_only")(frozenset({"noise"}))
POLICIES.register("scale_only")(frozenset({"scale"}))
POLICIES.register("none")(frozenset())

# The noise bank (signal/augment_ops.py): 2**22 floats (16 MB) hold a batch of 32 x 9000 at
# many disjoint offsets.
_NOISE_BANK_MIN_LEN = 1 << 22
_DRAWS_PER_ROW = 5  # warp factor, crop start, shift, scale, noise offset (fallback layout)


@dataclass(frozen=True)
class AugmentParams:
    """Strengths of the augmentation ops (only the ops of the chosen policy are applied)."""

    warp: float = 0.1  # time-warp factor drawn from U[1 - warp, 1 + warp]
    shift_fraction: float = 100 / 9000  # max circular shift as a fraction of input_length
    noise_std: float = 0.1  # in units of the per-record normalised signal
    scale_low: float = 0.8
    scale_high: float = 1.2

    def __post_init__(self) -> None:
        # warp <= 0.5 keeps every warped record at most 2L - 1 samples long, which reading the
        # padding from the zero tail relies on (see augment_ops.warp_fit_shift).
        if not 0.0 <= self.warp <= 0.5:
            raise ConfigError(f"augmentation warp must be in [0, 0.5], got {self.warp}")
        if not 0.0 <= self.shift_fraction < 1.0:
            raise ConfigError(
                f"augmentation shift_fraction must be in [0, 1), got {self.shift_fraction}"
            )
        if not self.noise_std >= 0.0:
            raise ConfigError(f"augmentation noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 < self.scale_low <= self.scale_high:
            raise ConfigError(
                "augmentation scale needs 0 < scale_low <= scale_high, got "
                f"[{self.scale_low}, {self.scale_high}]"
            )


@dataclass(frozen=True)
class Draws:
    """One batch's random choices, one host value per row (identity values for ops left off).

    factor: warp factor; warped: the record's length after the warp (round(L * factor));
    start: first warped sample kept by the fit; shift: circular shift k; scale: amplitude
    factor; noise_offsets: where each row's noise starts in the noise bank (empty: no noise).
    """

    factor: tuple[float, ...]
    warped: tuple[int, ...]
    start: tuple[int, ...]
    shift: tuple[int, ...]
    scale: tuple[float, ...]
    noise_offsets: tuple[int, ...]


class BatchAugmenter:
    """Random augmentation of a (B, Lmax) batch to (B, input_length), per `policy`.

    Call with (x, lengths, generator): x float32 (B, Lmax), normalised per record and zero
    beyond each record's length (the padding is read from there); lengths (B,) int, the true
    lengths; generator a torch.Generator on x's device. All random draws come from it: the same
    seed gives the same output. Returns a new tensor unless `out` is given.

    With `rows` (B,) int, the batch is x[rows] of a larger matrix (the training set), read in
    place: the same output as passing x[rows], without copying whole rows (as wide as the
    longest record) out first. lengths are then the batch's, (B,).

    `sample` + `apply` split a call in two, to inspect or replay a batch's draws. An augmenter
    keeps scratch buffers between calls, so one instance must not be called from two threads
    at once.
    """

    def __init__(
        self,
        policy: str,
        input_length: int,
        fit: str = "pad",
        params: AugmentParams = AugmentParams(),
    ) -> None:
        self.ops: frozenset[str] = POLICIES.get(policy)
        if fit not in FITS:
            raise ConfigError(f"unknown fit {fit!r}; known: {', '.join(FITS)}")
        if int(input_length) < 1:
            raise ConfigError(f"input_length must be >= 1, got {input_length}")
        self.policy = policy
        self.input_length = int(input_length)
        self.fit = fit
        self.params = params
        self.max_shift = max(1, round(self.input_length * params.shift_fraction))
        self.warp_on = "warp" in self.ops and params.warp > 0
        self.shift_on = "shift" in self.ops
        self.noise_on = "noise" in self.ops and params.noise_std > 0
        self.scale_on = "scale" in self.ops
        self.bank_length = max(_NOISE_BANK_MIN_LEN, 4 * self.input_length)
        self._ramps: dict[str, Ramp] = {}
        self._scratch: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return (
            f"BatchAugmenter(policy={self.policy!r}, input_length={self.input_length}, "
            f"fit={self.fit!r}, params={self.params})"
        )

    def _ramp(self, device: torch.device) -> Ramp:
        ramp = self._ramps.get(str(device))
        if ramp is None:
            ramp = self._ramps[str(device)] = Ramp(self.input_length, device)
        return ramp

    def _buffers(self, device: torch.device, count: int) -> tuple[Tensor, Tensor, Tensor]:
        """Flat float32, int32 and float32 scratch of `count` elements, reused between batches,
        so that the data path does not touch new memory each batch (the training step, which
        runs in between, measured slower after a data path that did)."""
        held = self._scratch.get(str(device))
        if held is None or held[0].numel() < count:
            held = self._scratch[str(device)] = (
                torch.empty(count, device=device, dtype=torch.float32),
                torch.empty(count, device=device, dtype=torch.int32),
                torch.empty(count, device=device, dtype=torch.float32),
            )
        return held[0][:count], held[1][:count], held[2][:count]

    def noise_bank(self, device: torch.device) -> Tensor:
        """The N(0, 1) bank noise is read from (fixed seed; generated once per device)."""
        return shared_noise_bank(self.bank_length, str(device))

    # -- the random choices ------------------------------------------------------------------

    def sample(self, lengths: list[int] | Tensor, generator: torch.Generator) -> Draws:
        """Draw one batch's choices from `generator` (one call to it, whatever the policy)."""
        lens = [int(v) for v in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
        b, n, p = len(lens), self.input_length, self.params
        u = torch.rand(
            _DRAWS_PER_ROW * b + 2, generator=generator, device=generator.device,
            dtype=torch.float64,
        ).tolist()

        def pick(v: float, count: int) -> int:
            """An integer uniform in [0, count) from a uniform float in [0, 1)."""
            return min(int(v * count), count - 1)

        # Column j of the per-row draws is u[j::5] (row-major, so a row's draws do not depend
        # on the batch size). Comprehensions: this runs once per batch on the host.
        k = _DRAWS_PER_ROW
        if self.warp_on:
            lo, span = 1.0 - p.warp, 2.0 * p.warp
            factor = [lo + span * v for v in u[0 : k * b : k]]
            # Records of fewer than 2 samples have no shape to stretch.
            warped = [round(ln * f) if ln >= 2 else ln for ln, f in zip(lens, factor, strict=False)]
        else:
            factor, warped = [1.0] * b, lens
        excess = [lw - n if lw > n else 0 for lw in warped]
        if self.fit == "pad":
            start = [e // 2 for e in excess]
        else:
            start = [pick(v, e + 1) for v, e in zip(u[1 : k * b : k], excess, strict=False)]
        if self.shift_on:
            m = self.max_shift
            shift = [pick(v, 2 * m + 1) - m for v in u[2 : k * b : k]]
        else:
            shift = [0] * b
        if self.scale_on:
            lo, span = p.scale_low, p.scale_high - p.scale_low
            scale = [lo + span * v for v in u[3 : k * b : k]]
        else:
            scale = [1.0] * b

        offsets: list[int] = []
        if self.noise_on and b:
            room = self.bank_length - n  # the last usable start
            if (b - 1) * n <= room:
                # Rows at a random stride d >= N (disjoint segments: independent rows) from a
                # random base: a strided view of the bank, no copy.
                d_max = n if b == 1 else min(2 * n, room // (b - 1))
                d = n + pick(u[-2], d_max - n + 1)
                base = pick(u[-1], room - (b - 1) * d + 1)
                offsets = [base + r * d for r in range(b)]
            else:  # batches too large for the bank: independent offsets, one copy
                offsets = [pick(v, room + 1) for v in u[4 : k * b : k]]
        return Draws(
            tuple(factor), tuple(warped), tuple(start), tuple(shift), tuple(scale), tuple(offsets)
        )

    # -- applying them -----------------------------------------------------------------------

    def __call__(
        self,
        x: Tensor,
        lengths: Tensor,
        generator: torch.Generator,
        out: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Augment a batch; `out`, if given, is a contiguous (B, N) float32 tensor to fill;
        `rows`, if given, the batch's rows of x (read in place)."""
        if generator.device.type != x.device.type:
            raise ValueError(
                f"generator is on {generator.device}, the batch on {x.device}: "
                "draws must come from a generator of the batch's device"
            )
        return self.apply(x, lengths, self.sample(lengths, generator), out=out, rows=rows)

    def apply(
        self,
        x: Tensor,
        lengths: Tensor,
        draws: Draws,
        out: Tensor | None = None,
        rows: Tensor | None = None,
    ) -> Tensor:
        """Augment a batch with given draws (from `sample` with the same lengths)."""
        x, lens, ids = check_batch(x, lengths, self.input_length, rows)
        b, n, dev = len(lens), self.input_length, x.device
        if len(draws.warped) != b:
            raise ValueError(f"draws are for {len(draws.warped)} rows, the batch has {b}")
        if out is None:
            out = torch.empty(b, n, device=dev, dtype=torch.float32)
        elif out.shape != (b, n) or out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous float32 tensor of shape ({b}, {n})")
        if b == 0:
            return out

        ramp = self._ramp(dev)
        shifts = draws.shift if self.shift_on else None
        if self.warp_on:
            warp_fit_shift(x, ids, lens, draws.warped, draws.start, shifts, ramp, out, self._buffers)
        else:
            copy_windows(x, ids, draws.start, shifts, ramp, out)
        if self.noise_on:  # after the fit: the padded zeros get noise too
            add_noise(out, draws.noise_offsets, self.noise_bank(out.device), self.params.noise_std)
        if self.scale_on:
            out.mul_(to_device(dev, list(draws.scale), torch.float32)[:, None])
        return out


def build_augmenter(policy: str, input_length: int, fit: str = "pad", **options: Any) -> BatchAugmenter:
    """The augmenter of the registered `policy`; `options` are config keys (others ignored)."""
    typed = POLICIES.options(policy, options)
    return BatchAugmenter(policy, input_length, fit=fit, params=AugmentParams(**typed.model_dump()))
