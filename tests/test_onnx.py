"""The delivered model as ONNX (ecg_tune/onnx_export.py) run without torch (ecg_tune/onnx_runtime.py).

Every model family with every transform is trained for one tiny epoch on synthetic records, saved
as a bundle (which writes model.onnx), and predicted by the bundle (torch) and by onnxruntime:
the same class for every record and probabilities within 1e-4, on records longer than the input
(windows) and shorter (padding). Also: a team of members that window differently, the windows and
statistics against the torch path's own, `predict --runtime onnx` with torch made unimportable,
the int8 copy, and a refit that must not fail when the export cannot be made.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the optional deploy extra)")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (the optional deploy extra)")

from ecg_tune.bundle import MemberModel, export_bundle, load_bundle, save_bundle, save_ensemble_bundle  # noqa: E402
from ecg_tune.cli import main  # noqa: E402
from ecg_tune.config import make_config  # noqa: E402
from ecg_tune.data import prepare  # noqa: E402
from ecg_tune.data.records import Records  # noqa: E402
from ecg_tune.data.tensors import to_tensors  # noqa: E402
from ecg_tune.onnx_runtime import INT8_FILE, ONNX_FILE, ONNX_META, OnnxModel, cut_windows, window_starts  # noqa: E402
from ecg_tune.training import evaluate  # noqa: E402
from ecg_tune.training.loop import fit  # noqa: E402
from ecg_tune.training.costs import forward_macs, head_macs, head_size, parameter_count  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LENGTH = 500  # samples per window: every synthetic record is longer, so all are windowed
TOLERANCE = 1e-4
FAMILIES: dict[str, dict[str, Any]] = {
    "simple_cnn": {"feature_size": 16},
    "cnn_svm": {"feature_size": 16},
    "ecg_cnn": {"width": 4},
    "resnet1d": {"width": 8, "depth": 2},
    "minirocket": {"rocket_features": 336, "rocket_head": "ridge"},
}
TRANSFORMS: dict[str, dict[str, Any]] = {
    "none": {},
    "wavelet": {"wavelet": "db2", "levels": 3},
    "fourier": {"fourier_log": True},
}
# Options no family x transform case above reaches.
VARIANTS: dict[str, dict[str, Any]] = {
    "resnet1d wavelet bands": {"model": "resnet1d", "width": 8, "depth": 2, "transform": "wavelet", "levels": 3,
                               "wavelet_output": "bands"},
    "minirocket multi + difference": {"model": "minirocket", "rocket_features": 672, "rocket_pooling": "multi",
                                      "rocket_difference": True, "rocket_head": "ridge", "transform": "none",
                                      "rows": 8},  # torch's multi pooling is slow: few records
    "simple_cnn normalisation none": {"model": "simple_cnn", "feature_size": 16, "transform": "none",
                                      "normalisation": "none"},
}
# A sitecustomize-free way to make `import torch` fail in a child process.
NO_TORCH = "import sys; sys.modules['torch'] = None\n"


@pytest.fixture(scope="module")
def dataset():
    return prepare("synthetic:24", progress=False)  # 21 records to train on, 3 to test


@pytest.fixture(scope="module")
def records(dataset) -> Records:
    """The test records, plus two cut shorter than the window (padding) and one exactly as long."""
    test = dataset.records.subset(dataset.index("test"))
    extra = [test.signals[0][:LENGTH // 3], test.signals[1][:LENGTH - 1], test.signals[2][:LENGTH]]
    return Records(signals=[*test.signals, *extra], labels=None, classes=test.classes,
                   record_ids=[*test.record_ids, "short", "almost", "exact"], fs=test.fs, source="test records")


_trained: dict[str, tuple] = {}


def trained(dataset, rows: int | None = None, **values: Any) -> tuple:
    """(network, head, config) after one epoch on train + val (the first `rows` of them), as the
    refit trains (cached)."""
    values = {"augmentation": "none", "input_length": LENGTH, "epochs": 1, "seed": 0, "batch_size": 16, **values}
    key = json.dumps([values, rows], sort_keys=True)
    if key not in _trained:
        config = make_config(values)
        (result,) = fit(config, dataset.tensors, dataset.index("train", "val")[:rows], None, device="cpu",
                        head_last_epoch_only=True)
        _trained[key] = (result.network, result.head, config)
    return _trained[key]


def saved(folder: Path, dataset, rows: int | None = None, **values: Any) -> Path:
    network, head, config = trained(dataset, rows, **values)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_bundle(folder, network, head, config, dataset.records.classes, dataset.records.fs)
    export = [str(w.message) for w in caught if ONNX_FILE in str(w.message)]
    assert not export and (folder / ONNX_FILE).is_file(), export
    return folder


def agreement(folder: Path, records: Records, onnx_file: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    expected = load_bundle(folder, device="cpu").predict(records)
    found = OnnxModel(folder, onnx_file=onnx_file).predict(records)
    return expected, found


def assert_agrees(folder: Path, records: Records, name: str) -> None:
    expected, found = agreement(folder, records)
    gap = float(np.abs(found - expected).max())
    print(f"{name}: max |p_onnx - p_torch| = {gap:.2e}")
    assert gap <= TOLERANCE, f"{name}: probabilities differ by {gap:.2e}"
    assert (found.argmax(axis=1) == expected.argmax(axis=1)).all(), f"{name}: a predicted class differs"


# Every family on the wavelet input (the default run's), and the Fourier bridge (a float64 DFT in
# the graph) on the two families that differ in how they use it; the rest of the grid is `slow`
# (every export costs seconds and CI's default run has a 10-minute budget).
_DEFAULT_CASES = {(model, "wavelet") for model in FAMILIES} | {("simple_cnn", "fourier"), ("minirocket", "fourier")}
_CASES = [pytest.param(model, transform, marks=() if (model, transform) in _DEFAULT_CASES else pytest.mark.slow,
                       id=f"{model}-{transform}")
          for model in FAMILIES for transform in TRANSFORMS]


@pytest.mark.parametrize(("model", "transform"), _CASES)
def test_each_family_and_transform_predicts_as_torch(model: str, transform: str, dataset, records: Records,
                                                     tmp_path: Path) -> None:
    folder = saved(tmp_path / "model", dataset, model=model, **FAMILIES[model], transform=transform,
                   **TRANSFORMS[transform])
    meta = json.loads((folder / ONNX_META).read_text())
    assert meta["opset"] >= 17 and meta["classes"] == dataset.records.classes and meta["fs"] == 300.0
    assert [(w["input_length"], w["overlap"]) for w in meta["windowings"]] == [(LENGTH, 0.5)]
    # What the device pays, as the trial reported it: parameters (a kept-apart head's too) and MACs.
    bundle = load_bundle(folder, device="cpu")
    (member,) = meta["members"]
    assert member["n_params"] == parameter_count(bundle.network) + head_size(bundle.head) > 0
    assert member["macs_per_window"] == forward_macs(bundle.network, features=bundle.head is not None
                                                     and bundle.head.file is not None) + head_macs(bundle.head)
    assert_agrees(folder, records, f"{model} ({transform})")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_other_options_predict_as_torch(name: str, dataset, records: Records, tmp_path: Path) -> None:
    few = VARIANTS[name].get("rows") is not None  # and few records: a long one, the short ones
    assert_agrees(saved(tmp_path / "model", dataset, **VARIANTS[name]),
                  records.subset([0, *range(len(records) - 3, len(records))]) if few else records, name)


def test_a_team_is_one_graph_with_its_weighted_mean(dataset, records: Records, tmp_path: Path) -> None:
    """Members that window records differently (input lengths 500 and 400) share one graph, an
    input pair each; a third windowing like the first shares its input."""
    members = [MemberModel(trial_id=trial, weight=weight, **dict(zip(("network", "head", "config"),
                                                                       trained(dataset, **values), strict=True)))
               for trial, weight, values in [
                   ("t1", 0.5, {"model": "simple_cnn", "feature_size": 16}),
                   ("t2", 0.3, {"model": "resnet1d", "width": 8, "depth": 2, "input_length": 400}),
                   ("t3", 0.2, {"model": "cnn_svm", "feature_size": 16, "transform": "wavelet", "levels": 3})]]
    folder = tmp_path / "model"
    save_ensemble_bundle(folder, members, dataset.records.classes, dataset.records.fs)
    meta = json.loads((folder / ONNX_META).read_text())
    assert sorted(w["input_length"] for w in meta["windowings"]) == [400, LENGTH]
    assert not (folder / "members" / "t1" / ONNX_FILE).exists()  # one graph for the team
    assert_agrees(folder, records, "team of 3 (2 windowings)")


def test_windows_and_statistics_are_the_torch_paths(records: Records) -> None:
    # The one window rule (data/windows.py, shared by evaluate.py and the runtime) against a plain
    # loop: a window every hop while it fits, then one ending at the record's end.
    for length in [1, 7, 499, 500, 501, 749, 750, 751, 1000, 5555, 16895]:
        for overlap in (0.0, 0.25, 0.5, 0.9):
            hop, expected, start = max(1, round(LENGTH * (1 - overlap))), [], 0
            while start + LENGTH <= length:
                expected.append(start)
                start += hop
            if not expected or expected[-1] != max(0, length - LENGTH):
                expected.append(max(0, length - LENGTH))
            assert window_starts(length, LENGTH, overlap).tolist() == expected, (length, overlap)
    tensors = to_tensors(records)
    windows, stats, owners = cut_windows(records.signals, LENGTH, 0.5)
    rows, starts = evaluate.record_windows(tensors.lengths, LENGTH, 0.5)
    np.testing.assert_array_equal(owners, rows)
    np.testing.assert_allclose(stats[:, 1], tensors.scale[owners], rtol=1e-6)
    z = ((windows - stats[:, :1]) / stats[:, 1:2]).astype(np.float32) * (np.arange(LENGTH) < stats[:, 2:3])
    import torch

    reference = evaluate.gather_windows(torch.as_tensor(tensors.signals), torch.as_tensor(rows),
                                        torch.as_tensor(starts), LENGTH).numpy()
    np.testing.assert_array_equal(z, reference)


@pytest.fixture(scope="module")
def cli_bundle(dataset, records: Records, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A simple_cnn bundle and inputs for `predict`: a table file and a WFDB record (.hea + .dat)."""
    import wfdb

    root = tmp_path_factory.mktemp("onnx_cli")
    folder = saved(root / "model", dataset, model="simple_cnn", **FAMILIES["simple_cnn"])
    table = root / "records.parquet"
    pd.DataFrame({"signal": [np.asarray(s) for s in records.signals], "record": records.record_ids,
                  "fs": 300.0}).to_parquet(table)
    signal = np.asarray(records.signals[0], dtype=np.float64)
    wfdb.wrsamp("A00001", fs=300, units=["mV"], sig_name=["ECG"], p_signal=signal[:, None], fmt=["16"],
                adc_gain=[1000.0], baseline=[0], write_dir=str(root))
    return folder, [str(table), str(root / "A00001.hea")]


def predict_rows(args: list[str], capsys: pytest.CaptureFixture[str]) -> list[list[str]]:
    assert main(["predict", *args]) == 0, capsys.readouterr().err
    return list(csv.reader(io.StringIO(capsys.readouterr().out)))


def assert_same_csv(expected: list[list[str]], found: list[list[str]], tolerance: float) -> None:
    assert found[0] == expected[0] and found[0][:2] == ["record", "predicted"]
    assert [row[:2] for row in found] == [row[:2] for row in expected]
    gaps = np.abs(np.array([row[2:] for row in found[1:]], dtype=float)
                  - np.array([row[2:] for row in expected[1:]], dtype=float))
    assert gaps.max() <= tolerance


def torch_free(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_the_runtime_runs_with_torch_unimportable(cli_bundle: tuple[Path, list[str]], records: Records,
                                                  tmp_path: Path) -> None:
    folder, _ = cli_bundle
    np.save(tmp_path / "signal.npy", records.signals[0])
    result = torch_free(f"import json, numpy as np\nfrom ecg_tune.onnx_runtime import OnnxModel\n"
                        f"p = OnnxModel({str(folder)!r}).predict_signals([np.load({str(tmp_path / 'signal.npy')!r})])\n"
                        "assert 'torch' not in [m.split('.')[0] for m, v in sys.modules.items() if v is not None]\n"
                        "print(json.dumps(p.tolist()))")
    assert result.returncode == 0, result.stderr
    expected = load_bundle(folder, device="cpu").predict(records.subset([0]))
    np.testing.assert_allclose(np.array(json.loads(result.stdout)), expected, atol=TOLERANCE)


def test_predict_with_the_onnx_runtime_writes_the_torch_csv_without_torch(
        cli_bundle: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    folder, inputs = cli_bundle
    expected = predict_rows(["--model", str(folder), *inputs], capsys)
    assert_same_csv(expected, predict_rows(["--model", str(folder), "--runtime", "onnx", *inputs], capsys),
                    TOLERANCE + 1e-6)
    probe = torch_free("import ecg_tune.data")
    if probe.returncode != 0:
        pytest.xfail("the readers import torch: ecg_tune/data/__init__.py imports ecg_tune/data/tensors.py, "
                     "which imports torch at module level (" + probe.stderr.strip().splitlines()[-1] + ")")
    script = (f"from ecg_tune.cli import main\n"
              f"sys.exit(main(['predict', '--model', {str(folder)!r}, '--runtime', 'onnx', *{inputs!r}]))")
    result = torch_free(script)
    assert result.returncode == 0, result.stderr
    assert_same_csv(expected, list(csv.reader(io.StringIO(result.stdout))), TOLERANCE + 1e-6)


def test_the_int8_copy_loads_and_predicts(cli_bundle: tuple[Path, list[str]], records: Records,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder, inputs = cli_bundle
    assert main(["export", "--model", str(folder), "--quantize", "int8"]) == 0
    assert INT8_FILE in capsys.readouterr().out and (folder / INT8_FILE).is_file()
    expected, found = agreement(folder, records, onnx_file=INT8_FILE)
    assert np.isfinite(found).all() and np.allclose(found.sum(axis=1), 1.0, atol=1e-5)
    rows = predict_rows(["--model", str(folder), "--runtime", "onnx", "--onnx-file", INT8_FILE, *inputs], capsys)
    assert len(rows) == len(records) + 2  # header, the table's records, the WFDB record
    print(f"int8: same class {np.mean(found.argmax(1) == expected.argmax(1)):.2f}, "
          f"max |p_int8 - p_torch| = {np.abs(found - expected).max():.2e}")


def test_export_rewrites_a_bundles_graph(dataset, tmp_path: Path) -> None:
    folder = saved(tmp_path / "model", dataset, model="resnet1d", **FAMILIES["resnet1d"])
    (folder / ONNX_FILE).unlink()
    written = export_bundle(folder)
    assert [p.name for p in written] == [ONNX_FILE, ONNX_META] and (folder / ONNX_FILE).is_file()


def test_a_refit_without_onnx_or_with_a_failing_export_saves_the_bundle_and_warns_once(
        dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from ecg_tune import onnx_export

    network, head, config = trained(dataset, model="cnn_svm", **FAMILIES["cnn_svm"])
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    with pytest.warns(UserWarning, match=r"no model\.onnx written: onnx not installed") as caught:
        save_bundle(tmp_path / "a", network, head, config, dataset.records.classes, 300.0)
    monkeypatch.undo()
    assert len([w for w in caught if ONNX_FILE in str(w.message)]) == 1
    assert not (tmp_path / "a" / ONNX_FILE).exists() and load_bundle(tmp_path / "a", device="cpu")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an exporter bug\nsecond line")

    monkeypatch.setattr(onnx_export, "export_onnx", broken)
    with pytest.warns(UserWarning, match=r"no model\.onnx written: cnn_svm \(none\): RuntimeError: an exporter bug$"):
        save_bundle(tmp_path / "b", network, head, config, dataset.records.classes, 300.0)
    assert not (tmp_path / "b" / ONNX_FILE).exists() and load_bundle(tmp_path / "b", device="cpu")


def test_compare_runtimes_reports_agreement_and_latency(cli_bundle: tuple[Path, list[str]],
                                                        records: Records) -> None:
    from ecg_tune.benchmarks.deploy import compare_runtimes

    folder, _ = cli_bundle
    found = compare_runtimes(folder, records.subset([0, 1, len(records) - 3]), threads=1, repeats=1)
    assert found["agreement"]["onnx_fp32"]["same_class"] == 1.0
    assert found["agreement"]["onnx_fp32"]["max_abs_diff"] <= TOLERANCE
    assert set(found["latency_ms"]) == {"torch", "onnx_fp32", "onnx_int8"} and found["record_samples"] == 9000
    # torch against itself on inputs one ulp away: a CNN's floor is far below the tolerance
    assert found["agreement"]["torch_1ulp"]["max_abs_diff"] < TOLERANCE
    assert all(value > 0 for value in found["latency_ms"].values())
    print("latency ms per 30-s record:", {k: round(v, 2) for k, v in found["latency_ms"].items()})


def test_one_ulp_away_moves_every_sample_to_a_float32_neighbour() -> None:
    from ecg_tune.benchmarks.deploy import one_ulp_away

    signals = [np.array([0.0, 1.0, -3.5, 1e-30, 65504.0], dtype=np.float32), np.linspace(-2, 2, 999, dtype=np.float32)]
    for before, after in zip(signals, one_ulp_away(signals), strict=True):
        assert after.dtype == np.float32 and after.shape == before.shape
        up, down = np.nextafter(before, np.float32(np.inf)), np.nextafter(before, np.float32(-np.inf))
        assert ((after == up) | (after == down)).all()
        assert (after != before).all() and (after > before).any() and (after < before).any()


@pytest.mark.parametrize(("labels", "gamma"), [
    (np.arange(60) % 4, "scale"),  # one-vs-one pairs, votes and confidences
    (np.arange(60) % 2 * 2, "auto"),  # two of three classes: the binary decision, an absent class's zero column
    (np.zeros(60, dtype=int), "scale"),  # one class: DummyClassifier's prior
    (np.arange(60) % 3, 0.05),
])
def test_the_svm_stage_graph_is_its_predict_proba(labels: np.ndarray, gamma: float | str) -> None:
    import torch

    from ecg_tune.models.svm import SVMStage
    from ecg_tune.onnx_parts import SvmGraph

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8)) + labels[:, None] * 0.7
    features[:, 3] = 1.5  # a constant feature: the scaler's scale 1, and gamma "scale" sees its variance 0
    stage = SVMStage(gamma=gamma).fit(features, labels, n_classes=max(3, int(labels.max()) + 1))
    probe = rng.normal(size=(25, 8)) * 2
    with torch.no_grad():
        found = SvmGraph(stage)(torch.as_tensor(probe, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(found, stage.predict_proba(probe.astype(np.float32)), atol=1e-9)
