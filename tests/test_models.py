"""The networks (ecg_tune.models) and the SVM stage (ecg_tune.models.svm).

What every registered model must do is checked in tests/test_model_contract.py; here, what the
shipped ones are. Every model trained by gradient alone (all registered ones but those that fit
themselves to data first: minirocket, tests/test_minirocket.py) is run on the shape each
transform gives for a short (96), medium (140) and long (9000) recording; wavelet lengths come
from pywt, never hard-coded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pytest
import pywt
import torch
from torch import nn

from ecg_tune.errors import ConfigError
from ecg_tune.models import MODELS, EcgModel, build_model, model_names
from ecg_tune.models.head import HeadFit
from ecg_tune.models.ridge import RidgeHead
from ecg_tune.models.head import stratified_subsample
from ecg_tune.models.svm import SVMOptions, SVMStage

SHIPPED = ["cnn_svm", "ecg_cnn", "minirocket", "resnet1d", "simple_cnn"]
# The models the shape matrix runs: every registered one that needs no fit to data first.
GRADIENT_MODELS = [name for name in MODELS.names() if not MODELS.get(name).needs_data_init]
N_CLASSES = 4
# The shape matrix runs narrow networks to stay fast: a model's length and channel handling
# does not depend on its width. The default widths are run at 9000 samples separately.
MATRIX_WIDTH = 8
# (input length, mother wavelet, level): the notebook's db2 L6 for 9000 samples; shallower
# levels for the short UCR series.
WAVELET_CASES = [(96, "db2", 2), (140, "db2", 4), (9000, "db2", 6)]


def approx_length(n: int, wavelet: str, level: int) -> int:
    for _ in range(level):
        n = pywt.dwt_coeff_len(n, pywt.Wavelet(wavelet).dec_len, "symmetric")
    return n


def transform_shapes() -> list[tuple[str, int, int]]:
    """(case id, channels, length) for every transform at every recording length."""
    shapes = []
    for n, wavelet, level in WAVELET_CASES:
        shapes += [
            (f"raw{n}", 1, n),
            (f"fourier{n}", 1, n // 2 + 1),
            (f"approx{n}-{wavelet}L{level}", 1, approx_length(n, wavelet, level)),
            (f"bands{n}-{wavelet}L{level}", level + 1, approx_length(n, wavelet, 1)),
        ]
    # The deepest approximation a 96-sample series allows: a handful of coefficients.
    deepest = pywt.dwt_max_level(96, "db2")
    shapes.append((f"approx96-db2L{deepest}", 1, approx_length(96, "db2", deepest)))
    return shapes


SHAPES = transform_shapes()


@contextlib.contextmanager
def native_convolutions() -> Iterator[None]:
    """Run with oneDNN off (torch.backends.mkldnn.flags would also warn about TF32)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def test_wavelet_lengths_are_the_known_ones():
    # The notebook's hard-coded 143 for 9000 samples, db2 level 6.
    assert approx_length(9000, "db2", 6) == 143
    assert len(pywt.wavedec(np.zeros(96), "db2", level=2)[0]) == approx_length(96, "db2", 2)


def test_the_shipped_models_are_registered():
    assert model_names() == SHIPPED
    assert set(MODELS) == set(SHIPPED)
    assert GRADIENT_MODELS == ["cnn_svm", "ecg_cnn", "resnet1d", "simple_cnn"]


@pytest.mark.parametrize("name", GRADIENT_MODELS)
@pytest.mark.parametrize("case,channels,length", SHAPES, ids=[s[0] for s in SHAPES])
def test_model_on_transform_shape(name: str, case: str, channels: int, length: int):
    torch.manual_seed(0)
    model = build_model(name, channels, length, N_CLASSES, width=MATRIX_WIDTH)
    assert isinstance(model, EcgModel)
    x = torch.randn(3, channels, length)

    model.train()
    # oneDNN builds (JIT-compiles) its kernels for every new tensor shape, which costs up to
    # seconds per small model on a busy 2-core machine; the training step of this matrix
    # runs on PyTorch's native convolutions instead (same shapes, ~100x faster at this size).
    # The oneDNN path is trained by test_default_sizes_train_on_9000_samples.
    with native_convolutions():
        logits = model(x)
        assert logits.shape == (3, N_CLASSES)
        feats = model.features(x)
        assert feats.shape == (3, model.feature_dim)
        loss = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 3]))
        loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    torch.optim.SGD(model.parameters(), lr=0.01).step()

    model.eval()
    with torch.no_grad():
        one = model(x[:1])
        assert one.shape == (1, N_CLASSES) and torch.isfinite(one).all()
        # Eval mode is deterministic and batch-independent (BatchNorm running stats).
        torch.testing.assert_close(one, model(x)[:1], rtol=1e-4, atol=1e-5)
        assert model.features(x[:1]).shape == (1, model.feature_dim)


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_default_sizes_train_on_9000_samples(name: str):
    torch.manual_seed(0)
    model = build_model(name, 1, 9000, N_CLASSES)
    x = torch.randn(2, 1, 9000)
    logits = model(x)
    assert logits.shape == (2, N_CLASSES)
    nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_which_models_fit_a_head():
    svm = build_model("cnn_svm", 1, 96, 2, svm_c=2.5, svm_gamma="auto", svm_max_train=40).fitted_head()
    assert isinstance(svm, SVMStage) and svm.fit_when is HeadFit.EVERY_EPOCH and svm.file == "svm.skops"
    # Every window of at most svm_max_train records is a row, at most twice as many rows.
    assert (svm.C, svm.gamma, svm.max_records, svm.max_train) == (2.5, "auto", 40, 80)
    ridge = build_model("minirocket", 1, 96, 2, rocket_features=84, rocket_head="ridge").fitted_head()
    assert isinstance(ridge, RidgeHead) and ridge.fit_when is HeadFit.ONLY_EPOCH and ridge.file is None
    for name in ("simple_cnn", "ecg_cnn", "resnet1d", "minirocket"):
        assert build_model(name, 1, 96, 2, rocket_features=84).fitted_head() is None
    # The refit raises the SVM stage's record cap to every training record.
    assert MODELS.record_caps() == ["svm_max_train"] == list(SVMOptions.record_caps)


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'vgg'"):
        build_model("vgg", 1, 96, 2)


@pytest.mark.parametrize("kwargs", [
    {"n_classes": 1}, {"width": 0}, {"depth": 0}, {"dropout": 1.0}, {"feature_size": 2.5},
    {"input_length": True},
])
def test_bad_sizes_are_config_errors(kwargs):
    args = {"in_channels": 1, "input_length": 96, "n_classes": 2}
    args.update({k: v for k, v in kwargs.items() if k in args})
    sizes = {k: v for k, v in kwargs.items() if k not in args}
    # Each model validates the options it reads (feature_size is simple_cnn's).
    name = "simple_cnn" if "feature_size" in sizes else "resnet1d"
    with pytest.raises(ConfigError):
        build_model(name, args["in_channels"], args["input_length"], args["n_classes"], **sizes)


def test_numpy_integer_sizes_are_accepted():
    model = build_model("resnet1d", np.int64(1), np.int64(96), np.int64(2), width=np.int64(8),
                        depth=np.int64(2), dropout=np.float64(0.1))
    assert model(torch.randn(2, 1, 96)).shape == (2, 2)


def test_simple_cnn_matches_the_seed_layout():
    model = build_model("simple_cnn", 1, 9000, 4, feature_size=64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 16, (3,), (0,)), (16, 32, (3,), (0,))]
    # 9000 -> conv 8998 -> pool 4499 -> conv 4497 -> pool 2248
    assert model.fc.in_features == 32 * 2248 and model.fc.out_features == 64
    assert model.head.in_features == 64 and model.head.out_features == 4
    assert model.feature_dim == 64
    kinds = [type(m).__name__ for m in model.conv]
    assert kinds == ["Conv1d", "ReLU", "MaxPool1d", "Conv1d", "ReLU", "MaxPool1d"]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 0
    assert all(torch.count_nonzero(c.bias) == 0 for c in convs)  # He init, zero bias
    # cnn_svm is the same network.
    twin = build_model("cnn_svm", 1, 9000, 4, feature_size=64)
    assert [p.shape for p in twin.parameters()] == [p.shape for p in model.parameters()]


def test_ecg_cnn_matches_the_seed_layout():
    model = build_model("ecg_cnn", 1, 9000, 5)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0]) for c in convs] == [
        (32, 5), (64, 5), (128, 3), (256, 3)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 4
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (256 * 562, 512), (512, 128), (128, 5)]
    assert sorted(m.p for m in model.modules() if isinstance(m, nn.Dropout)) == [0.3, 0.5]
    half = build_model("ecg_cnn", 1, 96, 5, width=16)
    assert [m.out_channels for m in half.modules() if isinstance(m, nn.Conv1d)] == [
        16, 32, 64, 128]


def test_resnet1d_sizes_and_any_length():
    model = build_model("resnet1d", 2, 9000, 4, width=16, depth=6, dropout=0.2)
    blocks = list(model.blocks)
    assert len(blocks) == 6
    assert model.feature_dim == 2 * 32  # channels double after four blocks
    spans = {(c.kernel_size[0] - 1) * c.dilation[0] + 1 for c in blocks[0].conv1.branches}
    assert len(spans) >= 3  # multi-scale
    assert [b.stride for b in blocks] == [2, 1, 2, 1, 2, 1]
    assert build_model("resnet1d", 1, 9000, 4, width=8, depth=20).feature_dim == 2 * 64  # cap
    model.eval()
    with torch.no_grad():
        for n in (9000, 2714, 18286, 500, 64, 7, 1):  # built for 9000, run on any length
            assert model(torch.randn(2, 2, n)).shape == (2, 4)


def test_fixed_length_models_reject_another_length():
    model = build_model("ecg_cnn", 1, 140, 5)
    with pytest.raises(ValueError, match="built for length 140"):
        model(torch.randn(2, 1, 141))
    with pytest.raises(ValueError, match=r"\(B, 1, L\)"):
        model(torch.randn(2, 3, 140))


# ---------------------------------------------------------------------------- SVM stage


def gaussian_clusters(n: int, n_features: int = 16, shares=(0.6, 0.1, 0.25, 0.05),
                      spread: float = 4.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(0.0, spread, (len(shares), n_features))
    y = rng.choice(len(shares), size=n, p=np.asarray(shares) / sum(shares))
    return centres[y] + rng.normal(size=(n, n_features)), y


def test_svm_learns_separable_clusters():
    x, y = gaussian_clusters(600)
    xt, yt = gaussian_clusters(400, seed=1)
    stage = SVMStage().fit(x, y)
    proba = stage.predict_proba(xt)
    assert proba.shape == (400, 4)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)
    assert (stage.predict(xt) == yt).mean() > 0.97
    # Calibrated: confident where the clusters are far apart.
    assert proba.max(axis=1).mean() > 0.9
    assert stage.pipeline is not None and [n for n, _ in stage.pipeline.steps] == ["scale", "svc"]


def test_svm_binary():
    x, y = gaussian_clusters(200, shares=(0.7, 0.3))
    stage = SVMStage().fit(x, y)
    proba = stage.predict_proba(x)
    assert proba.shape == (200, 2)
    assert (proba.argmax(axis=1) == y).mean() > 0.97


def test_svm_absent_class_gets_a_zero_column():
    x, y = gaussian_clusters(300)
    keep = y != 2
    stage = SVMStage().fit(x[keep], y[keep], n_classes=5)
    proba = stage.predict_proba(x)
    assert proba.shape == (300, 5)
    assert np.all(proba[:, 2] == 0) and np.all(proba[:, 4] == 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-9)


def test_svm_single_class_fit():
    x, _ = gaussian_clusters(20)
    stage = SVMStage().fit(x, np.full(20, 1), n_classes=3)
    np.testing.assert_array_equal(stage.predict_proba(x[:2]), [[0, 1, 0], [0, 1, 0]])


def test_svm_subsamples_to_max_train_and_keeps_every_class():
    x, y = gaussian_clusters(2000, shares=(0.9, 0.085, 0.014, 0.001))
    assert np.bincount(y, minlength=4)[3] >= 1
    stage = SVMStage(max_train=200).fit(x, y)
    used = y[stage.train_index_]
    assert len(used) == 200
    assert set(np.unique(used)) == set(np.unique(y))
    assert len(np.unique(stage.train_index_)) == 200
    # Proportions kept (within the floor given to rare classes).
    assert abs(np.mean(used == 0) - np.mean(y == 0)) < 0.03
    assert stage.predict_proba(x).shape == (2000, 4)


@pytest.mark.parametrize("max_rows", [4, 5, 10, 57, 100])
def test_stratified_subsample_exact_size(max_rows):
    y = np.array([0] * 80 + [1] * 15 + [2] * 4 + [3])
    idx = stratified_subsample(y, max_rows, seed=3)
    assert len(idx) == max_rows and len(set(idx)) == max_rows
    assert set(y[idx]) == {0, 1, 2, 3}


def test_stratified_subsample_small_input_is_untouched():
    y = np.array([0, 1, 1, 0])
    np.testing.assert_array_equal(stratified_subsample(y, 10), np.arange(4))
