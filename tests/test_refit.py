"""The refit, the model bundle and the predict command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import CINC, needs_shared_data, run_script

from ecg_tune.bundle import at_rate, load_bundle, save_bundle
from ecg_tune.config import make_config
from ecg_tune.data import load, prepare
from ecg_tune.data.records import Records
from ecg_tune.errors import DataError
from ecg_tune.training.evaluate import record_probabilities
from ecg_tune.training.loop import fit


def test_bundle_reloads_and_predicts_as_the_trained_network(tmp_path: Path) -> None:
    dataset = prepare("synthetic:60", progress=False)
    config = make_config({"input_length": 1200, "epochs": 1, "transform": "wavelet", "levels": 3})
    (result,) = fit(config, dataset.tensors, dataset.index("train"), None, device="cpu")
    test = dataset.index("test")
    expected, _ = record_probabilities(result.network, None, dataset.tensors, test, "zscore", 0.5,
                                       torch.device("cpu"))
    save_bundle(tmp_path / "model", result.network, None, config, dataset.records.classes, 300.0, onnx=False)
    bundle = load_bundle(tmp_path / "model", device="cpu")
    np.testing.assert_allclose(bundle.predict(dataset.records.subset(test)), expected, rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["preprocessing"]["input_length"] == 1200 and meta["classes"] == dataset.records.classes


def test_other_sampling_rates_are_resampled_or_refused() -> None:
    records = Records(signals=[np.sin(np.linspace(0, 20, 1000)).astype(np.float32)], labels=None,
                      classes=[], record_ids=["r"], fs=500.0, source="x")
    assert len(at_rate(records, 300.0).signals[0]) == 600
    unknown = Records(signals=records.signals, labels=None, classes=[], record_ids=["r"], source="table.csv")
    with pytest.raises(DataError, match="sampling rate is unknown"):
        at_rate(unknown, 300.0)
    assert len(at_rate(unknown, 300.0, assumed_fs=150.0).signals[0]) == 2000


@pytest.fixture(scope="module")
def refitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke space searched and refitted through the command line, as a user would, on a
    local cluster without GPUs (this machine's). Seeded TPE's first smoke trials are cnn_svm, so
    the bundle carries an SVM stage."""
    out = tmp_path_factory.mktemp("refit") / "run"
    result = run_script("search.py", "--space", "smoke", "--data", "synthetic:120", "--out", str(out),
                 "--num-samples", "2", "--max-epochs", "1", "--cv", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best val_cinc_f1" in result.stdout and "test (" in result.stdout
    return out


def test_search_writes_its_results(refitted: Path) -> None:
    for name in ("best_config.json", "trials.csv", "trials.parquet", "split.csv"):
        assert (refitted / name).is_file(), name
    assert (refitted / "experiment").is_dir()
    assert json.loads((refitted / "best_config.json").read_text())["config"]["model"] == "cnn_svm"


def test_refit_writes_report_pictures_and_bundle(refitted: Path) -> None:
    report = json.loads((refitted / "report.json").read_text())
    # no ensemble.json: the single best, as before issue 24, plus the refit's wall time
    assert set(report) == {"test", "validation", "config", "epochs", "refit_seconds"} and report["refit_seconds"] > 0
    test = report["test"]
    for key in ("accuracy", "macro_f1", "cinc_f1", "weighted", "per_class", "classes", "confusion_matrix",
                "n_records", "ci95"):
        assert key in test, key
    split = pd.read_csv(refitted / "split.csv")
    assert test["n_records"] == int((split["split"] == "test").sum())
    assert report["epochs"] == json.loads((refitted / "best_config.json").read_text())["epoch"]
    for picture in ("confusion_matrix.png", "training_curves.png", "search_overview.png"):
        assert (refitted / picture).stat().st_size > 1000, picture
    assert sorted(p.name for p in (refitted / "model").iterdir()) == ["config.json", "model.onnx", "onnx.json",
                                                                       "svm.skops", "weights.pt"]


def test_predict_in_a_fresh_process_matches_the_test_report(refitted: Path, tmp_path: Path) -> None:
    dataset = prepare("synthetic:120", split_file=refitted / "split.csv", progress=False)
    test = dataset.records.subset(dataset.index("test"))
    table = tmp_path / "test.parquet"
    pd.DataFrame({"signal": test.signals, "record": test.record_ids, "fs": 300.0}).to_parquet(table)
    result = run_script("predict.py", "--model", str(refitted / "model"), str(table))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "record,predicted,p_N,p_A,p_O,p_~"
    predicted = pd.read_csv(pd.io.common.StringIO(result.stdout))
    expected = pd.read_csv(refitted / "test_predictions.csv")
    assert list(predicted["record"]) == list(expected["record"])
    assert list(predicted["predicted"]) == list(expected["predicted"])
    np.testing.assert_allclose(predicted["p_N"], expected["p_N"], atol=1e-5)


def test_predict_reports_bad_inputs_and_classifies_the_rest(refitted: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    signals = [np.asarray(s) for s in load("synthetic:20").signals[:3]]
    pd.DataFrame({"signal": signals, "fs": 300.0}).to_parquet(good)
    nan = tmp_path / "nan.parquet"
    pd.DataFrame({"signal": [np.full(3000, np.nan, np.float32)], "record": ["broken"], "fs": 300.0}).to_parquet(nan)
    result = run_script("predict.py", "--model", str(refitted / "model"), str(good), str(tmp_path / "missing.hea"),
                 str(nan), str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and "broken" in errors[1]
    assert len(result.stdout.strip().splitlines()) == 1 + 3


@needs_shared_data
def test_predict_reads_mat_records_and_folders_without_labels(refitted: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for name in ("A00001", "A00002"):
        for ext in (".hea", ".mat"):
            shutil.copy(CINC / f"{name}{ext}", folder)
    result = run_script("predict.py", "--model", str(refitted / "model"), str(CINC / "A00003.mat"), str(folder),
                 "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(tmp_path / "out.csv")
    assert list(rows["record"]) == ["A00003", "A00001", "A00002"]
    assert np.allclose(rows.filter(like="p_").sum(axis=1), 1.0, atol=1e-4)


def test_benchmark_deploy_measures_the_delivered_model(refitted: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from ecg_tune.cli import main

    run = Path(shutil.copytree(refitted, tmp_path / "run"))  # the shared folder keeps its files
    (run / "model" / "model.onnx").unlink()  # as a --no-onnx refit leaves it: the graph is exported first
    out = tmp_path / "results"
    assert main(["benchmark", "deploy", "--run", str(run), "--test-records", "3", "--out", str(out)]) == 0
    (written,) = out.glob("deploy-*.json")
    result = json.loads(written.read_text())
    best = json.loads((run / "best_config.json").read_text())["trial_id"]
    assert result["members"] == [best] and result["test_records"] == 3 and result["run"] == str(run)
    assert result["agreement"]["onnx_fp32"]["same_class"] == 1.0
    assert set(result["agreement"]) >= {"onnx_fp32", "onnx_int8", "torch_1ulp", "torch"}
    assert (run / "model" / "model.onnx").is_file() and (run / "model" / "model.int8.onnx").is_file()
    assert f"| delivered: {best} | 1.000 |" in capsys.readouterr().out

    assert main(["benchmark", "deploy", "--run", str(tmp_path)]) == 2  # a folder without a refit
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no report.json; refit the search first" in err[0], err
