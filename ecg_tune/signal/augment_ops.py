"""The tensor kernels of batched augmentation: windows, warps, noise, on the batch's device.

This module owns the ops `BatchAugmenter` (signal/augment.py, which owns the policies, their
options and the random draws) applies to a batch once its draws are made: checking a batch
(`check_batch`), copying fitted and shifted windows (`copy_windows` with the index templates of
`Ramp`), the warp + fit + shift gather (`warp_fit_shift`), the noise bank (`shared_noise_bank`)
and adding noise from it (`add_noise`), and the deterministic fit for evaluation
(`fit_to_length`). They take host lists of per-row values and never draw random numbers.

Speed (for a small model the data path decides the epoch time): steps 1-3 of augment.py's
semantics (warp, fit, shift) are ONE index computation. For output position i of row b the source position is
c_b * (start_b + ((i - k_b) mod N)), c_b = (L - 1) / (Lw - 1); then one pair of `index_select`s
(floor and floor + 1) and one `lerp`. Window positions past the warped record land on the zero
tail of the source, so the padding needs no mask pass. The modulo of the shift is a row copy
from a doubled ramp, not arithmetic on every element. Noise is a strided view into a bank of
N(0, 1) generated once per device (a fresh `randn` of the batch measured ~50 us per sample).
Per-row quantities (B numbers) are computed on the host from one draw of the caller's
generator: as a few dozen tiny tensor ops they cost ~0.2 ms per batch on CPU.
The training loop passes the whole training matrix with the batch's `rows`: the gathers read
the records where they are (copying whole rows out first, as wide as the longest record,
measured 8 of the data path's ~55 us per sample on CinC 2017), the left neighbours land in
the output and the scratch (positions, indices, right neighbours) is reused between batches.
Every record keeps its own warp factor: shared or quantised factors per batch would make
(B x N) gathers no fewer (c_b also depends on each record's length) and would change the
documented distribution (tests/test_augment.py tests it).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Ramp",
    "add_noise",
    "check_batch",
    "copy_windows",
    "fit_to_length",
    "shared_noise_bank",
    "to_device",
    "warp_fit_shift",
]

# The noise bank is a pure function of (seed, length, device), so a batch's randomness comes
# only from the caller's generator: the same seed gives the same output whatever ran before.
_NOISE_BANK_SEED = 20170101
# Flat positions are int32 (half the memory traffic of int64): a source read in place must have
# fewer elements than this, else its rows are copied out first.
_INT32_LIMIT = 2**31 - 1


@functools.lru_cache(maxsize=4)
def shared_noise_bank(length: int, device: str) -> Tensor:
    # Shared by every augmenter in the process: a trial or a benchmark builds several, and
    # generating 16 MB of normal noise costs tens of milliseconds each time.
    gen = torch.Generator(device=device).manual_seed(_NOISE_BANK_SEED)
    return torch.randn(length, generator=gen, device=device)


def check_batch(
    x: Tensor, lengths: Tensor, input_length: int, rows: Tensor | None = None
) -> tuple[Tensor, list[int], list[int] | None]:
    """Validate shapes; return x as contiguous float32, the lengths as a host list and the
    batch's row numbers in x (None: the batch is x itself).

    With `rows`, x is read in place when it is already contiguous float32 and small enough for
    int32 flat indices; otherwise its rows are copied out here, as a caller would have.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (batch, samples), got shape {tuple(x.shape)}")
    batch = x.shape[0] if rows is None else (rows.shape[0] if rows.dim() == 1 else -1)
    if rows is not None and (batch < 0 or rows.dtype.is_floating_point):
        raise ValueError(f"rows must be a 1-d integer tensor, got {rows.dtype} {tuple(rows.shape)}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(
            f"lengths must have shape ({batch},) for a batch of {batch} rows of x "
            f"{tuple(x.shape)}, got {tuple(lengths.shape)}"
        )
    if input_length < 1:
        raise ValueError(f"input_length must be >= 1, got {input_length}")
    lens = [int(v) for v in lengths.tolist()]
    if lens and (min(lens) < 0 or max(lens) > x.shape[1]):
        raise ValueError(f"lengths must lie in [0, {x.shape[1]}] (the width of x)")
    ids = None
    if rows is not None:
        ids = [int(v) for v in rows.tolist()]
        if ids and (min(ids) < 0 or max(ids) >= x.shape[0]):
            raise ValueError(f"rows must lie in [0, {x.shape[0]}) (the rows of x)")
        in_place = x.dtype == torch.float32 and x.is_contiguous() and x.numel() < _INT32_LIMIT
        if not in_place:
            x, ids = x.index_select(0, rows.to(x.device)), None
    if x.dtype != torch.float32:
        x = x.float()
    return x.contiguous(), lens, ids


def _fetch(x: Tensor, ids: list[int] | None) -> Tensor:
    """The batch's rows as a matrix of their own (x itself when it is the batch)."""
    return x if ids is None else x.index_select(0, to_device(x.device, ids, torch.int64))


def _row_starts(ids: list[int] | None, count: int, width: int) -> list[int]:
    """Flat offset of each batch row in its source matrix of `width` columns."""
    return [r * width for r in (range(count) if ids is None else ids)]


def _widen(x: Tensor, width: int) -> Tensor:
    """x with zero columns appended up to `width` (x itself when it is wide enough)."""
    if x.shape[1] >= width:
        return x
    wide = x.new_zeros(x.shape[0], width)
    wide[:, : x.shape[1]] = x
    return wide


def to_device(device: torch.device, values: list, dtype: torch.dtype) -> Tensor:
    """A small host list as a tensor on `device` (one copy; no sync on CUDA)."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def copy_windows(
    x: Tensor,
    ids: list[int] | None,
    starts: Sequence[int],
    shifts: Sequence[int] | None,
    ramp: Ramp | None,
    out: Tensor,
) -> None:
    """out[b, i] = x[row_b, starts[b] + ((i - shifts[b]) mod N)], x read as zero beyond its
    width; row_b = ids[b] (b when ids is None).

    Without a shift this is a copy of contiguous runs; with one, an element-wise gather.
    """
    b, n = out.shape
    if ids is None and shifts is None and max(starts) == 0:
        w = min(x.shape[1], n)
        out[:, :w] = x[:, :w]
        out[:, w:] = 0.0
        return
    # Reads reach start + N - 1 <= max(L - 1, N - 1); beyond each record x holds zeros, which
    # are the padding, so only a batch narrower than N needs widening (after copying it out:
    # a row read in place would run into the next one).
    if x.shape[1] < n:
        x, ids = _fetch(x, ids), None
    src = _widen(x, n)
    first = [s + r for r, s in zip(_row_starts(ids, b, src.shape[1]), starts, strict=True)]
    if shifts is None:
        # Each output row is one contiguous run of the source: copy rows of an unfold view
        # (a memcpy per row, about half the cost of an element-wise gather).
        runs = src.view(-1).unfold(0, n, 1)
        torch.index_select(runs, 0, to_device(x.device, first, torch.int64), out=out)
        return
    assert ramp is not None, "a shift needs the rolled ramp"
    index = torch.empty(b, n, device=x.device, dtype=torch.int32)
    rolls = to_device(x.device, ramp.roll_rows(shifts), torch.int64)
    torch.index_select(ramp.rolled_i, 0, rolls, out=index)
    index.add_(to_device(x.device, first, torch.int32)[:, None])
    torch.index_select(src.view(-1), 0, index.view(-1), out=out.view(-1))


class Ramp:
    """Index templates for one (N, device), built once.

    A circular shift by k makes output i read window position (i - k) mod N: the length-N
    window starting at (-k) mod N of [0..N-1, 0..N-1], so a row copy per record replaces a
    modulo over every element.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        ramp = torch.arange(2 * n, device=device, dtype=torch.int32) % n
        self.n = n
        self.ramp_f = ramp[:n].float()
        self.rolled_i = ramp.unfold(0, n, 1)  # (N + 1, N) view: row r = window starting at r
        self.rolled_f = ramp.float().unfold(0, n, 1)

    def roll_rows(self, shifts: Sequence[int]) -> list[int]:
        """Rows of `rolled_*` that start the windows rolled by `shifts`."""
        return [(-k) % self.n for k in shifts]


def fit_to_length(x: Tensor, lengths: Tensor, input_length: int) -> Tensor:
    """Deterministic fit for evaluation: zero pad at the end, or keep the centred window.

    x: (B, Lmax) float, zero beyond each record's length; lengths: (B,) int. Returns a new
    (B, input_length) float32 tensor on x's device.
    """
    x, lens, _ = check_batch(x, lengths, input_length)
    out = x.new_empty(x.shape[0], input_length)
    if lens:
        starts = [max(length - input_length, 0) // 2 for length in lens]
        copy_windows(x, None, starts, None, None, out)
    return out


def warp_fit_shift(
    x: Tensor,
    ids: list[int] | None,
    lens: list[int],
    warped: Sequence[int],
    starts: Sequence[int],
    shifts: Sequence[int] | None,
    ramp: Ramp,
    out: Tensor,
    buffers: Callable[[torch.device, int], tuple[Tensor, Tensor, Tensor]],
) -> None:
    """Warp, fit and shift as one position computation, two gathers and one lerp.

    Window position q of row b reads source position pos = c * (start + q). For
    q >= Lw + 1 that is >= L (as Lw <= 2L - 1 for warp <= 0.5), i.e. on the zero tail of
    the record, so the padding comes out zero without a mask pass. Only q = Lw can fall
    between the last sample and the tail (stretched records): its weight is set to 1 so it
    reads the right neighbour, which is on the tail.

    warped, starts: each row's warped length and first kept sample (the batch's `Draws`);
    buffers(device, count): the caller's reusable float32, int32 and float32 scratch.
    """
    b, n = out.shape
    dev = x.device
    steps = [
        (length - 1) / (lw - 1) if length >= 2 and lw >= 2 else 1.0
        for length, lw in zip(lens, warped, strict=False)
    ]
    # Columns up to the right neighbour of the furthest position read (q = N - 1), with a
    # margin for float32 rounding, must exist: the right gather must not leave its row.
    reach = math.floor(max(map(operator.mul, steps, [s + n - 1 for s in starts])))
    if reach + 3 > x.shape[1]:  # widening needs the batch's rows copied out
        x, ids = _fetch(x, ids), None
    src = _widen(x, max(x.shape[1], reach + 3))
    width = src.shape[1]
    # Per-row values in three small tensors (one host-to-device copy each).
    start_step = to_device(dev, [*starts, *steps], torch.float32)
    start, step = start_step[:b, None], start_step[b:, None]
    rows = [r for r in range(b) if warped[r] < n]  # rows with window position Lw
    k = shifts if shifts is not None else [0] * b
    fix = [r * n + (warped[r] + k[r]) % n for r in rows]  # its flat output index
    rolls = ramp.roll_rows(shifts) if shifts is not None else []
    rolls_fix = to_device(dev, [*rolls, *fix], torch.int64)
    row_offset = to_device(dev, _row_starts(ids, b, width), torch.int32)[:, None]

    pos_flat, index_flat, right_flat = buffers(dev, b * n)
    pos, index = pos_flat.view(b, n), index_flat.view(b, n)
    if shifts is None:
        torch.add(ramp.ramp_f[None, :], start, out=pos)
    else:
        torch.index_select(ramp.rolled_f, 0, rolls_fix[: len(rolls)], out=pos)
        pos.add_(start)
    pos.mul_(step)  # (start + q) is exact in float32: one rounding

    index.copy_(pos)  # truncation is floor: positions are >= 0
    pos.frac_()  # now the lerp weights
    if fix:
        pos_flat.index_fill_(0, rolls_fix[len(rolls) :], 1.0)
    index.add_(row_offset)

    # index_select on the flat source: a plain loop over the index, measured about 4x as
    # fast as `gather` or advanced indexing here. The left neighbours go straight into
    # `out`, which the lerp then updates in place (one (B, N) buffer fewer to touch).
    flat = src.view(-1)
    torch.index_select(flat, 0, index_flat, out=out.view(-1))
    torch.index_select(flat[1:], 0, index_flat, out=right_flat)
    torch.lerp(out, right_flat.view(b, n), pos, out=out)


def add_noise(out: Tensor, offsets: tuple[int, ...], bank: Tensor, std: float) -> None:
    """out += std * bank[offset_b : offset_b + N] for each row b."""
    b, n = out.shape
    d = offsets[1] - offsets[0] if b > 1 else n
    if d >= n and offsets == tuple(range(offsets[0], offsets[0] + b * d, d)):
        out.add_(bank.as_strided((b, n), (d, 1), offsets[0]), alpha=std)
    else:
        rows = to_device(out.device, list(offsets), torch.int64)
        out.add_(bank.unfold(0, n, 1).index_select(0, rows), alpha=std)
