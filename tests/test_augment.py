"""Batched augmentation: each policy applies exactly its ops, with the documented semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecg_tune.errors import ConfigError
from ecg_tune.signal import augment, augment_ops
from ecg_tune.signal.augment import (
    POLICIES,
    AugmentParams,
    BatchAugmenter,
)
from ecg_tune.signal.augment_ops import fit_to_length

N = 9000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_batch(lengths: list[int], width: int | None = None, kind: str = "sine") -> tuple:
    """Records zero beyond their length; values away from 0 so the valid part is nonzero."""
    width = width or max(lengths)
    x = torch.zeros(len(lengths), width)
    for b, length in enumerate(lengths):
        t = torch.arange(length, dtype=torch.float64)
        if kind == "sine":  # slow: period 300 samples, a phase per row
            v = 1.5 + torch.sin(2 * np.pi * t / 300 + b)
        else:  # chirp: the period shrinks from 600 samples at the start to 200 at the end
            v = 1.5 + torch.sin(2 * np.pi * t * (1 + t / max(length, 1)) / 600)
        x[b, :length] = v.float()
    return x, torch.tensor(lengths)


def random_batch(lengths: list[int], seed: int = 0) -> tuple:
    g = gen(seed)
    x = torch.randn(len(lengths), max(lengths), generator=g)
    lens = torch.tensor(lengths)
    x[torch.arange(x.shape[1])[None, :] >= lens[:, None]] = 0.0
    return x, lens


CINC_LIKE = [9000, 18286, 2714, 9000, 12345, 9000, 5000, 9001, 8999, 17000, 9000, 4000]


def warp_oracle(x: np.ndarray, length: int, warped: int) -> np.ndarray:
    """The record resampled to `warped` samples, end points kept (linear interpolation)."""
    if warped < 2 or length < 2:
        return x[:length].astype(np.float64)
    return np.interp(np.linspace(0, length - 1, warped), np.arange(length), x[:length])


def fit_oracle(v: np.ndarray, start: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    part = v[start : start + n]
    out[: len(part)] = part
    return out


# -- registry, parameters and errors -----------------------------------------------------------


def test_policies_are_exactly_their_names() -> None:
    names = {"all", "shift_only", "noise_only", "warp_only", "scale_only", "none"}
    assert set(POLICIES.names()) == names
    assert POLICIES.get("all") == {"warp", "shift", "noise", "scale"}
    assert POLICIES.get("none") == frozenset()
    for op in ("warp", "shift", "noise", "scale"):
        assert POLICIES.get(f"{op}_only") == {op}


def test_unknown_names_are_config_errors_naming_them() -> None:
    with pytest.raises(ConfigError, match="'mixup'"):
        BatchAugmenter("mixup", N)
    with pytest.raises(ConfigError, match="'stretch'"):
        BatchAugmenter("all", N, fit="stretch")
    with pytest.raises(ConfigError, match="input_length"):
        BatchAugmenter("all", 0)
    with pytest.raises(ConfigError, match="warp"):
        AugmentParams(warp=0.9)
    with pytest.raises(ConfigError, match="noise_std"):
        AugmentParams(noise_std=-1.0)
    with pytest.raises(ConfigError, match="scale"):
        AugmentParams(scale_low=1.3, scale_high=1.2)
    with pytest.raises(ConfigError, match="shift_fraction"):
        AugmentParams(shift_fraction=1.5)


def test_bad_batches_are_rejected() -> None:
    aug = BatchAugmenter("all", 100)
    x, lens = random_batch([80, 120])
    with pytest.raises(ValueError, match="lengths"):
        aug(x, torch.tensor([80, 121]), gen())
    with pytest.raises(ValueError, match="lengths"):
        aug(x, torch.tensor([80]), gen())
    with pytest.raises(ValueError, match="batch, samples"):
        aug(x[0], lens[:1], gen())
    with pytest.raises(ValueError, match="out"):
        aug(x, lens, gen(), out=torch.empty(2, 99))


def test_default_shift_is_the_seeds_100_on_9000() -> None:
    assert BatchAugmenter("shift_only", 9000).max_shift == 100
    assert BatchAugmenter("shift_only", 96).max_shift == 1  # never below 1


# -- fit_to_length and `none` ------------------------------------------------------------------


def test_fit_to_length_pads_at_the_end_and_trims_the_centre() -> None:
    x, lens = random_batch([96, 9000, 18286, 9001, 9002])
    y = fit_to_length(x, lens, N)
    assert y.shape == (5, N) and y.dtype == torch.float32
    assert torch.equal(y[0, :96], x[0, :96]) and not y[0, 96:].any()
    assert torch.equal(y[1], x[1, :N])
    assert torch.equal(y[2], x[2, 4643 : 4643 + N])  # (18286 - 9000) // 2 = 4643
    assert torch.equal(y[3], x[3, :N])  # odd excess: floor((1) / 2) = 0
    assert torch.equal(y[4], x[4, 1 : 1 + N])


def test_fit_to_length_narrow_batch_and_no_trim() -> None:
    x, lens = random_batch([96, 50])
    y = fit_to_length(x, lens, 200)
    assert torch.equal(y[:, :96], x) and not y[:, 96:].any()
    y = fit_to_length(x, lens, 60)  # 96 -> centre window from 18
    assert torch.equal(y[0], x[0, 18:78]) and torch.equal(y[1], x[1, :60])


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_none_is_only_the_fit(fit: str) -> None:
    x, lens = random_batch(CINC_LIKE)
    aug = BatchAugmenter("none", N, fit=fit)
    y = aug(x, lens, gen(3))
    if fit == "pad":
        assert torch.equal(y, fit_to_length(x, lens, N))
    draws = aug.sample(lens, gen(3))
    for b, length in enumerate(CINC_LIKE):
        expected = fit_oracle(x[b].numpy().astype(np.float64), draws.start[b], N)
        assert torch.equal(y[b], torch.from_numpy(expected).float())
        if length <= N:  # short records are padded at the end under both fits
            assert draws.start[b] == 0 and not y[b, length:].any()
    assert draws.factor == (1.0,) * len(CINC_LIKE) and set(draws.shift) == {0}


def test_crop_draws_random_windows_of_long_records() -> None:
    lengths = [18286] * 16 + [5000]
    x, lens = random_batch(lengths)
    aug = BatchAugmenter("none", N, fit="crop")
    draws = aug.sample(lens, gen(1))
    starts = draws.start[:16]
    assert len(set(starts)) > 10 and min(starts) >= 0 and max(starts) <= 18286 - N
    y = aug.apply(x, lens, draws)
    for b in range(16):
        assert torch.equal(y[b], x[b, starts[b] : starts[b] + N])
    assert torch.equal(y[16, :5000], x[16, :5000]) and not y[16, 5000:].any()


# -- single ops --------------------------------------------------------------------------------


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_noise_only_adds_noise_everywhere_and_nothing_else(fit: str) -> None:
    x, lens = random_batch(CINC_LIKE)
    aug = BatchAugmenter("noise_only", N, fit=fit)
    draws = aug.sample(lens, gen(5))
    y = aug.apply(x, lens, draws)
    fitted = BatchAugmenter("none", N, fit=fit).apply(x, lens, draws)
    residual = y - fitted
    assert y.shape == (len(CINC_LIKE), N)
    # Neither shifted nor scaled: the residual would then carry the unit-variance signal.
    assert abs(float(residual.std()) - 0.1) < 0.003 and abs(float(residual.mean())) < 0.003
    per_row = residual.std(dim=1)
    assert float(per_row.min()) > 0.09 and float(per_row.max()) < 0.11
    # The padded zone (row 2: 2714 samples) carries the same noise: no free length feature.
    pad_zone = y[2, 2714:]
    assert (pad_zone != 0).all() and abs(float(pad_zone.std()) - 0.1) < 0.005
    # Rows get independent noise.
    corr = torch.corrcoef(residual)
    assert float((corr - torch.eye(len(CINC_LIKE))).abs().max()) < 0.05


def test_noise_std_is_a_parameter() -> None:
    x, lens = random_batch([9000] * 4)
    aug = BatchAugmenter("noise_only", N, params=AugmentParams(noise_std=0.5))
    residual = aug(x, lens, gen()) - fit_to_length(x, lens, N)
    assert abs(float(residual.std()) - 0.5) < 0.01


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_scale_only_is_a_per_row_multiple_of_the_fit(fit: str) -> None:
    x, lens = random_batch(CINC_LIKE)
    aug = BatchAugmenter("scale_only", N, fit=fit)
    draws = aug.sample(lens, gen(7))
    y = aug.apply(x, lens, draws)
    fitted = BatchAugmenter("none", N, fit=fit).apply(x, lens, draws)
    for b, length in enumerate(CINC_LIKE):
        a = draws.scale[b]
        assert 0.8 <= a <= 1.2
        torch.testing.assert_close(y[b], fitted[b] * a, rtol=1e-6, atol=1e-6)
        valid = min(length, N)
        ratio = y[b, :valid] / fitted[b, :valid]
        assert float(ratio.max() - ratio.min()) < 1e-5
        assert not y[b, valid:].any()  # padding stays exactly zero without noise
    assert len(set(draws.scale)) == len(CINC_LIKE)


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_shift_only_is_a_per_row_circular_roll_of_the_fit(fit: str) -> None:
    lengths = CINC_LIKE * 2
    x, lens = random_batch(lengths)
    aug = BatchAugmenter("shift_only", N, fit=fit)
    draws = aug.sample(lens, gen(11))
    y = aug.apply(x, lens, draws)
    fitted = BatchAugmenter("none", N, fit=fit).apply(x, lens, draws)
    for b in range(len(lengths)):
        k = draws.shift[b]
        assert -100 <= k <= 100
        assert torch.equal(y[b], torch.roll(fitted[b], k))
        # Padding is moved, not filled: the count of zeros is unchanged.
        assert int((y[b] == 0).sum()) == int((fitted[b] == 0).sum())
    assert len(set(draws.shift)) > len(lengths) // 2


def test_shift_draws_cover_both_ends() -> None:
    aug = BatchAugmenter("shift_only", 300)  # max shift round(300 / 90) = 3
    shifts = aug.sample([300] * 400, gen()).shift
    assert set(shifts) == {-3, -2, -1, 0, 1, 2, 3}


@pytest.mark.parametrize("fit", ["pad", "crop"])
@pytest.mark.parametrize("kind", ["sine", "chirp"])
def test_warp_only_resamples_like_linear_interpolation(fit: str, kind: str) -> None:
    lengths = [9000, 18286, 2714, 12345, 5000, 9500, 8200, 96]
    x, lens = make_batch(lengths, kind=kind)
    aug = BatchAugmenter("warp_only", N, fit=fit)
    draws = aug.sample(lens, gen(13))
    y = aug.apply(x, lens, draws).numpy()
    for b, length in enumerate(lengths):
        f, lw = draws.factor[b], draws.warped[b]
        assert 0.9 <= f <= 1.1 and lw == round(length * f)
        expected = fit_oracle(warp_oracle(x[b].numpy().astype(np.float64), length, lw),
                              draws.start[b], N)
        np.testing.assert_allclose(y[b], expected, atol=2e-4)
        # The valid length changes by the factor; the rest is exactly zero.
        valid = min(lw, N)
        assert (y[b, :valid] != 0).all() and not y[b, valid:].any()
    assert len({round(f, 6) for f in draws.factor}) == len(lengths)


def test_warp_keeps_a_slow_shape_against_scipy() -> None:
    from scipy.interpolate import interp1d

    x, lens = make_batch([6000] * 6, kind="sine")
    aug = BatchAugmenter("warp_only", N)
    draws = aug.sample(lens, gen(2))
    y = aug.apply(x, lens, draws).numpy()
    for b in range(6):
        lw = draws.warped[b]
        oracle = interp1d(np.arange(6000), x[b, :6000].numpy().astype(np.float64))(
            np.linspace(0, 5999, lw)
        )
        np.testing.assert_allclose(y[b, :lw], oracle, atol=2e-4)
        # A stretched sine has a proportionally longer period: count its rising zero crossings.
        z = y[b, :lw] - 1.5
        crossings = int(((z[:-1] < 0) & (z[1:] >= 0)).sum())
        assert abs(crossings - 6000 / 300) <= 1


def test_stretched_short_records_end_in_exact_zeros() -> None:
    """Position Lw lies between the last sample and the tail for f > 1: it must be 0."""
    for seed in range(20):
        x, lens = make_batch([1000, 3001, 4567, 7777], width=9000)
        aug = BatchAugmenter("warp_only", N, params=AugmentParams(warp=0.5))
        draws = aug.sample(lens, gen(seed))
        y = aug.apply(x, lens, draws)
        for b, lw in enumerate(draws.warped):
            assert (y[b, :lw] != 0).all() and not y[b, lw:].any()


def test_warp_of_full_width_rows_needs_no_zero_tail() -> None:
    """Every row as long as the batch: positions past the record must still read zeros."""
    x, lens = make_batch([96] * 8)
    for n in (96, 200):
        for fit in ("pad", "crop"):
            aug = BatchAugmenter("warp_only", n, fit=fit, params=AugmentParams(warp=0.3))
            draws = aug.sample(lens, gen(n))
            y = aug.apply(x, lens, draws).numpy()
            for b in range(8):
                expected = fit_oracle(
                    warp_oracle(x[b].numpy().astype(np.float64), 96, draws.warped[b]),
                    draws.start[b], n,
                )
                np.testing.assert_allclose(y[b], expected, atol=1e-5)


# -- all ops together, determinism, shapes -----------------------------------------------------


@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_all_composes_the_ops_in_order(fit: str) -> None:
    x, lens = make_batch(CINC_LIKE)
    aug = BatchAugmenter("all", N, fit=fit)
    draws = aug.sample(lens, gen(17))
    y = aug.apply(x, lens, draws).numpy().astype(np.float64)
    bank = aug.noise_bank(torch.device("cpu")).numpy().astype(np.float64)
    for b, length in enumerate(CINC_LIKE):
        warped = warp_oracle(x[b].numpy().astype(np.float64), length, draws.warped[b])
        window = np.roll(fit_oracle(warped, draws.start[b], N), draws.shift[b])
        off = draws.noise_offsets[b]
        expected = (window + 0.1 * bank[off : off + N]) * draws.scale[b]
        np.testing.assert_allclose(y[b], expected, atol=5e-4)
    assert (y != 0).all()  # noise everywhere, padding included


@pytest.mark.parametrize("policy", sorted(POLICIES.names()))
@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_padded_zone_has_noise_exactly_when_noise_is_on(policy: str, fit: str) -> None:
    x, lens = make_batch([3000, 6000, 8000, 18286])
    aug = BatchAugmenter(policy, N, fit=fit)
    draws = aug.sample(lens, gen(5))
    y = aug.apply(x, lens, draws)
    for b in range(3):
        zeros = int((y[b] == 0).sum())
        if "noise" in aug.ops:
            assert zeros == 0
        else:  # the signal is nonzero: the zeros are exactly the padding, wherever shifted
            assert zeros == N - draws.warped[b]
    assert int((y[3] == 0).sum()) == 0  # a long record fills the window


@pytest.mark.parametrize("policy", sorted(POLICIES.names()))
def test_same_seed_same_output_other_seed_other_output(policy: str) -> None:
    x, lens = random_batch(CINC_LIKE)
    aug = BatchAugmenter(policy, N)
    a = aug(x, lens, gen(42))
    BatchAugmenter(policy, N)(x, lens, gen(1))  # history must not matter
    b = BatchAugmenter(policy, N)(x, lens, gen(42))
    assert torch.equal(a, b)
    assert torch.equal(aug.apply(x, lens, aug.sample(lens, gen(42))), a)
    c = aug(x, lens, gen(43))
    assert torch.equal(a, c) == (policy == "none")


@pytest.mark.parametrize("policy", ["warp_only", "shift_only", "noise_only", "scale_only", "all"])
def test_rows_get_their_own_draws(policy: str) -> None:
    x, lens = random_batch([9000])
    x, lens = x.repeat(12, 1), lens.repeat(12)
    y = BatchAugmenter(policy, N)(x, lens, gen(8))
    for b in range(1, 12):
        assert not torch.equal(y[0], y[b])


@pytest.mark.parametrize("policy", sorted(POLICIES.names()))
@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_shapes_short_and_long(policy: str, fit: str) -> None:
    for lengths, n in (([96] * 4, 96), ([96, 60], 9000), ([18286, 96], 9000), ([140] * 3, 128)):
        x, lens = random_batch(lengths)
        y = BatchAugmenter(policy, n, fit=fit)(x, lens, gen())
        assert y.shape == (len(lengths), n) and y.dtype == torch.float32
        assert torch.isfinite(y).all()
    x, lens = random_batch([96])
    empty = BatchAugmenter(policy, 96, fit=fit)(x[:0], lens[:0], gen())
    assert empty.shape == (0, 96)


@pytest.mark.parametrize("policy", sorted(POLICIES.names()))
def test_degenerate_lengths(policy: str) -> None:
    x, lens = random_batch([3, 2, 1, 8])
    x[:, :] = torch.where(x == 0, x, x.abs() + 1)  # nonzero inside each record
    x, lens = torch.cat([x, torch.zeros(1, 8)]), torch.cat([lens, torch.tensor([0])])
    aug = BatchAugmenter(policy, 6, params=AugmentParams(warp=0.5))
    draws = aug.sample(lens, gen(21))
    y = aug.apply(x, lens, draws)
    assert y.shape == (5, 6) and torch.isfinite(y).all()
    if "noise" not in aug.ops:
        for b, lw in enumerate(draws.warped):
            assert not y[b].roll(-draws.shift[b])[min(lw, 6):].any()
        assert not y[4].any()  # an empty record is all padding


def test_out_argument_is_filled_and_returned() -> None:
    x, lens = random_batch(CINC_LIKE)
    aug = BatchAugmenter("all", N)
    out = torch.empty(len(CINC_LIKE), N)
    assert aug(x, lens, gen(4), out=out) is out
    assert torch.equal(out, aug(x, lens, gen(4)))


def test_batches_too_large_for_the_bank_still_get_independent_noise(monkeypatch) -> None:
    monkeypatch.setattr(augment, "_NOISE_BANK_MIN_LEN", 5000)
    aug = BatchAugmenter("noise_only", 1000)
    assert aug.bank_length == 5000  # 6 rows of 1000 at disjoint offsets do not fit
    x, lens = random_batch([1000] * 6)
    draws = aug.sample(lens, gen(9))
    y = aug.apply(x, lens, draws)
    bank = aug.noise_bank(torch.device("cpu"))
    for b, off in enumerate(draws.noise_offsets):
        torch.testing.assert_close(y[b] - x[b], 0.1 * bank[off : off + 1000])
    assert len(set(draws.noise_offsets)) == 6
    assert torch.equal(aug(x, lens, gen(9)), y)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_the_batch_device() -> None:
    x, lens = random_batch(CINC_LIKE)
    aug = BatchAugmenter("all", N)
    g = torch.Generator(device="cuda").manual_seed(0)
    y = aug(x.cuda(), lens.cuda(), g)
    assert y.device.type == "cuda" and y.shape == (len(CINC_LIKE), N)
    with pytest.raises(ValueError, match="generator"):
        aug(x.cuda(), lens, gen())


# -- the warp's distribution -------------------------------------------------------------------


@pytest.mark.parametrize("warp", [0.1, 0.3])
def test_warp_factors_are_uniform_independent_and_applied_as_drawn(warp: float) -> None:
    """The documented distribution: f ~ U[1 - warp, 1 + warp], one independent draw per record,
    the same at every position of a batch; and the output is warped by exactly the drawn f."""
    from scipy import stats

    aug = BatchAugmenter("warp_only", N, params=AugmentParams(warp=warp))
    g = gen(2017)
    batches = [np.asarray(aug.sample([9000] * 32, g).factor) for _ in range(400)]
    factors = np.stack(batches)  # (batch, row)
    flat = factors.ravel()
    assert flat.min() >= 1 - warp and flat.max() <= 1 + warp
    uniform = stats.uniform(loc=1 - warp, scale=2 * warp)
    assert stats.kstest(flat, uniform.cdf).pvalue > 1e-3
    # Moments of U[1 - w, 1 + w] over 12,800 draws: mean 1, variance w^2 / 3.
    assert abs(flat.mean() - 1) < 4 * warp / np.sqrt(3 * flat.size)
    assert abs(flat.var() / (warp**2 / 3) - 1) < 0.05
    # Every batch position has the same distribution (no factors shared or quantised per batch).
    for row in (0, 15, 31):
        assert stats.kstest(factors[:, row], uniform.cdf).pvalue > 1e-3
    assert all(len(set(batch)) == 32 for batch in batches)
    # Independent rows: neighbours within a batch are uncorrelated.
    assert abs(np.corrcoef(factors[:, :-1].ravel(), factors[:, 1:].ravel())[0, 1]) < 0.05

    # Applied as drawn: without noise a nonzero record's nonzero span is round(L * f) samples.
    x, lens = make_batch([2000, 3001, 4567, 6000, 7000, 8000])
    draws = aug.sample(lens, gen(5))
    y = aug.apply(x, lens, draws)
    for b, length in enumerate(lens.tolist()):
        nonzero = int((y[b] != 0).sum())
        assert nonzero == min(round(length * draws.factor[b]), N) == min(draws.warped[b], N)


# -- rows read in place ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", sorted(POLICIES.names()))
@pytest.mark.parametrize("fit", ["pad", "crop"])
def test_rows_read_in_place_give_the_fetched_batch_output(
    policy: str, fit: str, monkeypatch
) -> None:
    matrix, lens = make_batch(CINC_LIKE + [18286, 96, 9000, 12000], width=20000, kind="chirp")
    rows = torch.tensor([12, 0, 5, 1, 13, 2, 9, 1, 15, 7])
    aug = BatchAugmenter(policy, N, fit=fit, params=AugmentParams(warp=0.3))
    fetched = aug(matrix[rows], lens[rows], gen(31))

    def no_copy(*_: object) -> None:
        raise AssertionError("the rows were copied out, not read in place")

    monkeypatch.setattr(augment_ops, "_fetch", no_copy)
    assert torch.equal(aug(matrix, lens[rows], gen(31), rows=rows), fetched)
    out = torch.empty(len(rows), N)
    assert aug(matrix, lens[rows], gen(31), out=out, rows=rows) is out
    assert torch.equal(out, fetched)


@pytest.mark.parametrize("policy", ["all", "warp_only", "shift_only", "none"])
def test_rows_fall_back_to_a_copy_when_in_place_cannot_work(policy: str) -> None:
    # Rows as wide as the matrix (a stretched read would run into the next row), a matrix
    # narrower than the input, float64 and non-contiguous matrices.
    x, lens = make_batch([96, 96, 90, 96])
    rows = torch.tensor([3, 0, 0, 2])
    for n in (60, 96, 200):
        aug = BatchAugmenter(policy, n, params=AugmentParams(warp=0.5))
        expected = aug(x[rows], lens[rows], gen(n))
        assert torch.equal(aug(x, lens[rows], gen(n), rows=rows), expected)
        assert torch.equal(aug(x.double(), lens[rows], gen(n), rows=rows), expected)
        wide = torch.zeros(4, 2 * x.shape[1])
        wide[:, ::2] = x
        assert torch.equal(aug(wide[:, ::2], lens[rows], gen(n), rows=rows), expected)


def test_bad_rows_are_rejected() -> None:
    aug = BatchAugmenter("all", 100)
    x, lens = random_batch([80, 120, 100])
    with pytest.raises(ValueError, match="rows"):
        aug(x, lens[:2], gen(), rows=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="rows"):
        aug(x, lens[:2], gen(), rows=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="lengths"):
        aug(x, lens, gen(), rows=torch.tensor([0, 1]))
