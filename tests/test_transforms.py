"""Batched transforms against their references: pywt.wavedec (symmetric mode) and numpy's rfft.

Grid style (as in ptwt's suite): every wavelet x level x length case compares every coefficient
with pywt, for both wavelet outputs; the "bands" layout is first checked structurally (ordered,
nearest-neighbour, lossless) and then undone band by band.
"""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from ecg_tune.errors import ConfigError
from ecg_tune.signal.dwt import max_wavelet_level
from ecg_tune.signal.transforms import (
    TRANSFORMS,
    BatchTransform,
    WaveletTransform,
    build_transform,
)

WAVELETS = ["haar", "db2", "db4", "sym4", "coif1", "bior2.2", "rbio3.1"]
LENGTHS = [64, 65, 96, 140, 141, 1000]
RTOL = 1e-4


def _signals(rows: int, length: int, seed: int = 0) -> np.ndarray:
    # A random walk plus noise: ECG-like low-frequency content and a non-zero mean, so the
    # approximation coefficients are large and the details small, as on real records.
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.standard_normal((rows, length)), axis=1) * 0.1 + 1.0).astype(np.float32)


def _close(got: np.ndarray, ref: np.ndarray) -> None:
    # float32 operators and sums: relative to the band's scale (single coefficients can be ~0).
    scale = max(float(np.abs(ref).max()), 1e-6)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=RTOL * scale)


def _levels(length: int, wavelet: str) -> list[int]:
    deepest = pywt.dwt_max_level(length, pywt.Wavelet(wavelet).dec_len)
    return sorted({lvl for lvl in (1, 2, deepest) if 1 <= lvl <= deepest})


CASES = [
    (wavelet, length, level)
    for wavelet in WAVELETS
    for length in LENGTHS
    for level in _levels(length, wavelet)
]


@pytest.mark.parametrize(("wavelet", "length", "levels"), CASES)
def test_wavelet_approx_matches_pywt(wavelet: str, length: int, levels: int) -> None:
    x = _signals(3, length)
    transform = build_transform("wavelet", length, wavelet=wavelet, levels=levels)
    y = transform(torch.from_numpy(x))
    ref = pywt.wavedec(x.astype(np.float64), wavelet, mode="symmetric", level=levels)[0]
    assert y.dtype == torch.float32
    assert tuple(y.shape) == (3, *transform.output_shape) == (3, 1, ref.shape[1])
    _close(y[:, 0].numpy(), ref)


def _check_layout(index: np.ndarray, lengths: list[int], levels: int) -> None:
    """Every channel shows its coefficients in order, each at least once, nearest-neighbour."""
    for channel, (row, length) in enumerate(zip(index, lengths, strict=False)):
        assert row[0] == 0 and row[-1] == length - 1
        steps = np.diff(row)
        assert set(np.unique(steps)) <= {0, 1}  # ordered, no coefficient skipped
        # Inner runs last 2**(j-1) positions (stride 2**j); cA_L runs like cD_L.
        j = levels if channel == 0 else levels - channel + 1
        runs = np.diff(np.flatnonzero(steps))
        assert np.all(runs == 2 ** (j - 1))


@pytest.mark.parametrize(("wavelet", "length", "levels"), CASES)
def test_wavelet_bands_match_pywt(wavelet: str, length: int, levels: int) -> None:
    x = _signals(2, length, seed=1)
    transform = build_transform(
        "wavelet", length, wavelet=wavelet, levels=levels, wavelet_output="bands"
    )
    y = transform(torch.from_numpy(x))
    ref = pywt.wavedec(x.astype(np.float64), wavelet, mode="symmetric", level=levels)
    assert tuple(y.shape) == (2, *transform.output_shape) == (2, levels + 1, y.shape[2])
    assert y.shape[2] >= ref[-1].shape[1]  # never shorter than cD_1: nothing is trimmed
    assert transform.band_names == [f"cA{levels}"] + [f"cD{j}" for j in range(levels, 0, -1)]
    assert transform.band_lengths == [r.shape[1] for r in ref]

    index = transform.band_index.numpy()
    _check_layout(index, transform.band_lengths, levels)
    for channel, ref_band in enumerate(ref):
        # Undo the layout by hand: the value at each position is the indexed coefficient.
        _close(y[:, channel].numpy(), ref_band[:, index[channel]])
    for got, ref_band in zip(transform.split_bands(y), ref, strict=False):
        _close(got.numpy(), ref_band)


def test_bands_are_time_aligned_for_a_long_filter() -> None:
    # An impulse in the middle must peak at about the same output position in every detail band.
    length, levels = 1024, 4
    transform = build_transform(
        "wavelet", length, wavelet="sym4", levels=levels, wavelet_output="bands"
    )
    x = torch.zeros(1, length)
    x[0, 512] = 1.0
    y = transform(x)[0]
    assert transform.grid_start < 0  # sym4 bands start before cD_1's first coefficient
    # Output position i stands for input time about 2 * (i + grid_start): the impulse is at
    # i = 256 - grid_start. Each detail band peaks within one of its coefficients of it.
    for channel in range(1, levels + 1):
        half_stride = 2 ** (levels - channel)  # positions one coefficient of the band covers
        peak = int(torch.argmax(y[channel].abs())) + transform.grid_start
        assert abs(peak - 256) <= half_stride + 1, (transform.band_names[channel], peak)


@pytest.mark.parametrize(
    ("wavelet", "levels", "output"), [("db2", 6, "approx"), ("sym4", 5, "bands")]
)
def test_wavelet_9000_samples(wavelet: str, levels: int, output: str) -> None:
    x = _signals(2, 9000, seed=2)
    transform = build_transform(
        "wavelet", 9000, wavelet=wavelet, levels=levels, wavelet_output=output
    )
    ref = pywt.wavedec(x.astype(np.float64), wavelet, mode="symmetric", level=levels)
    if output == "approx":
        ref = ref[:1]
    bands = transform.split_bands(transform(torch.from_numpy(x)))
    assert len(bands) == len(ref)
    for got, ref_band in zip(bands, ref, strict=False):
        _close(got.numpy(), ref_band)


@pytest.mark.parametrize("output", ["approx", "bands"])
def test_rows_are_independent(output: str) -> None:
    # The same row alone or inside a batch of different rows gives the same result.
    x = torch.from_numpy(_signals(5, 141, seed=3))
    transform = build_transform("wavelet", 141, wavelet="db4", levels=3, wavelet_output=output)
    batch = transform(x)
    for i in range(len(x)):
        torch.testing.assert_close(transform(x[i : i + 1])[0], batch[i], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("length", "output"), [(128, "bands"), (141, "bands"), (128, "approx")])
def test_strided_input(length: int, output: str) -> None:
    # A non-contiguous batch (every other column of a wider array) gives the same result.
    wide = torch.from_numpy(_signals(3, 2 * length, seed=8))
    x = wide[:, ::2]
    transform = build_transform("wavelet", length, wavelet="db2", levels=3, wavelet_output=output)
    torch.testing.assert_close(transform(x), transform(x.contiguous()), rtol=1e-6, atol=1e-6)


def test_float64_input_and_float64_module() -> None:
    x = _signals(2, 96).astype(np.float64)
    ref = pywt.wavedec(x, "db2", mode="symmetric", level=3)[0]
    transform = build_transform("wavelet", 96, wavelet="db2", levels=3)
    # float64 input to a float32 module: computed in the module's dtype.
    assert transform(torch.from_numpy(x)).dtype == torch.float32
    y = transform.double()(torch.from_numpy(x))
    assert y.dtype == torch.float64
    _close(y[:, 0].numpy(), ref)


def test_operators_are_non_persistent_buffers() -> None:
    transform = build_transform("wavelet", 140, wavelet="db2", levels=2, wavelet_output="bands")
    assert transform.state_dict() == {}
    assert len(list(transform.buffers())) >= 3
    assert all(b.device.type == "cpu" for b in transform.buffers())


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("length", [96, 141, 9000])
def test_fourier_matches_numpy(length: int, log: bool) -> None:
    x = _signals(3, length, seed=4)
    transform = build_transform("fourier", length, fourier_log=log)
    y = transform(torch.from_numpy(x))
    ref = np.abs(np.fft.rfft(x.astype(np.float64), axis=-1))
    if log:
        ref = np.log1p(ref)
    assert tuple(y.shape) == (3, *transform.output_shape) == (3, 1, length // 2 + 1)
    _close(y[:, 0].numpy(), ref)


def test_fourier_gradient_path() -> None:
    x = torch.from_numpy(_signals(2, 96, seed=7))
    transform = build_transform("fourier", 96, fourier_log=True)
    x_grad = x.clone().requires_grad_(True)
    y = transform(x_grad)
    torch.testing.assert_close(y.detach(), transform(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x_grad.grad is not None and torch.isfinite(x_grad.grad).all()


def test_none_is_the_signal_as_one_channel() -> None:
    x = torch.from_numpy(_signals(4, 65))
    transform = build_transform("none", 65)
    assert transform.output_shape == (1, 65)
    assert torch.equal(transform(x), x[:, None, :])


def test_registry_and_base_class() -> None:
    assert TRANSFORMS.names() == ["fourier", "none", "wavelet"]
    for name in TRANSFORMS:
        transform = build_transform(name, 96, levels=2)
        assert isinstance(transform, BatchTransform)
        assert isinstance(transform, torch.nn.Module)
        out = transform(torch.zeros(2, 96))
        assert tuple(out.shape) == (2, *transform.output_shape)


def test_output_length_from_pywt() -> None:
    assert build_transform("wavelet", 9000).output_shape == (1, 143)
    assert build_transform("wavelet", 9000, wavelet="haar", levels=4).output_shape == (1, 563)
    assert max_wavelet_level(9000, "db2") == pywt.dwt_max_level(9000, 4) == 11
    assert max_wavelet_level(96, "db2") == 5  # floor(log2(96 / 3))
    assert max_wavelet_level(64, "db4") == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"wavelet": "nope"}, r"^wavelet: 'nope' is not a discrete wavelet"),
        ({"wavelet": "morl"}, r"^wavelet: 'morl' is a continuous wavelet"),
        ({"wavelet": "cmor1.5-1.0"}, r"^wavelet: 'cmor1.5-1.0' is a continuous wavelet"),
        ({"levels": 6}, r"^levels=6 is beyond the feasible maximum 5 for wavelet db2 on 96-sample"),
        ({"levels": 0}, r"^levels: must be at least 1, got 0"),
        ({"levels": 2.5}, r"^levels: Input should be a valid integer"),
        ({"wavelet_output": "all"}, r"^wavelet_output: Input should be 'approx' or 'bands'"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        build_transform("wavelet", 96, **kwargs)
    assert "\n" not in str(info.value)


def test_other_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown transform 'stft'"):
        build_transform("stft", 96)
    with pytest.raises(ConfigError, match=r"^levels=9 is beyond the feasible maximum 7"):
        WaveletTransform(1000, wavelet="sym4", levels=9)
    with pytest.raises(ConfigError, match=r"^wavelet='morl'"):
        max_wavelet_level(1000, "morl")
    with pytest.raises(ConfigError, match="input_length=0"):
        build_transform("none", 0)


def test_wrong_input_shape_is_a_value_error() -> None:
    transform = build_transform("wavelet", 96, levels=2)
    with pytest.raises(ValueError, match=r"expects a \(batch, 96\) tensor, got shape \(2, 95\)"):
        transform(torch.zeros(2, 95))
    with pytest.raises(ValueError):
        transform(torch.zeros(96))


@pytest.mark.parametrize("output", ["approx", "bands"])
def test_gradient_path_gives_the_same_values(output: str) -> None:
    # A batch that requires grad takes the functional path (no out= writes): same numbers,
    # and gradients flow back to the input.
    x = torch.from_numpy(_signals(2, 140, seed=5))
    transform = build_transform("wavelet", 140, wavelet="coif1", levels=2, wavelet_output=output)
    plain = transform(x)
    x_grad = x.clone().requires_grad_(True)
    y = transform(x_grad)
    torch.testing.assert_close(y.detach(), plain, rtol=1e-6, atol=1e-6)
    y.square().sum().backward()
    assert x_grad.grad is not None and torch.isfinite(x_grad.grad).all()
    with torch.inference_mode():
        torch.testing.assert_close(transform(x), plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("wavelet", "length"), [("dmey", 1000), ("bior6.8", 141), ("db10", 96)])
def test_long_filters_where_most_coefficients_are_edges(wavelet: str, length: int) -> None:
    levels = max_wavelet_level(length, wavelet)
    x = _signals(2, length, seed=6)
    transform = build_transform(
        "wavelet", length, wavelet=wavelet, levels=levels, wavelet_output="bands"
    )
    ref = pywt.wavedec(x.astype(np.float64), wavelet, mode="symmetric", level=levels)
    for got, ref_band in zip(transform.split_bands(transform(torch.from_numpy(x))), ref, strict=False):
        _close(got.numpy(), ref_band)


def test_edge_support_bounds_need_no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast derivation probes only the input positions the edge rows can read; the exhaustive
    # fallback (correct but slow) must not be needed for ordinary cases.
    from ecg_tune.signal import dwt

    fallbacks = []
    derive = dwt._derive_plan

    def spy(n: int, wavelet: pywt.Wavelet, levels: int, exhaustive: bool) -> object:
        if exhaustive:
            fallbacks.append((n, wavelet.name, levels))
        return derive(n, wavelet, levels, exhaustive=exhaustive)

    monkeypatch.setattr(dwt, "_derive_plan", spy)
    for wavelet in ["haar", "db3", "sym5", "coif2", "bior3.5"]:
        for length in [33, 128, 257, 1001]:
            for levels in range(1, max_wavelet_level(length, wavelet) + 1):
                dwt.wavelet_plan.__wrapped__(length, wavelet, levels)
    assert fallbacks == []


@pytest.mark.parametrize(
    ("name", "options"),
    [("wavelet", {}), ("wavelet", {"wavelet_output": "bands"}), ("fourier", {}), ("none", {})],
)
def test_forward_uses_torch_ops_only(name: str, options: dict) -> None:
    # On the meta device any numpy/pywt call in forward would fail: this stands in for a GPU.
    transform = build_transform(name, 9000, **options).to("meta")
    y = transform(torch.empty(3, 9000, device="meta"))
    assert y.device.type == "meta"
    assert tuple(y.shape) == (3, *transform.output_shape)


def test_exhaustive_derivation_and_self_check() -> None:
    # The fallback path probes every input position; the self-check must accept it and must
    # reject an operator with a wrong edge row.
    from ecg_tune.signal import dwt

    wavelet = pywt.Wavelet("sym4")
    plan = dwt._derive_plan(141, wavelet, 3, exhaustive=True)
    assert dwt._plan_matches_pywt(plan, wavelet)
    broken_left = plan.left.copy()
    broken_left[0, 0] += 0.5
    broken = dwt.WaveletPlan(
        plan.input_length, plan.wavelet, plan.levels, plan.filter_len, plan.bands,
        broken_left, plan.right,
    )
    assert not dwt._plan_matches_pywt(broken, wavelet)
