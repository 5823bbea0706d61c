"""The refit report: test scores against sklearn, bootstrap intervals, pictures, report.json, and
the run folder's writers of the refit's files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

# Imported as a module: a bare `test_metrics` name in this file would look like a test to pytest.
from ecg_tune.reporting import evaluation, pictures
from ecg_tune.reporting.analysis import timed_reports
from ecg_tune.runs import PICTURES, RunFolder, TrialRecord, TrialTable
from ecg_tune.training.metrics import classification_metrics
from ecg_tune.training.reported import TRAINING_ITERATION

CINC = ["N", "A", "O", "~"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _probabilities(y: np.ndarray, k: int, skill: float, rng: np.random.Generator) -> np.ndarray:
    """Random class probabilities that lean towards the truth by `skill`."""
    p = rng.dirichlet(np.ones(k), size=len(y))
    p[np.arange(len(y)), y] += skill
    return p / p.sum(axis=1, keepdims=True)


def _one_hot(pred: list[int], k: int) -> np.ndarray:
    return np.eye(k)[np.asarray(pred)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn_on_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 300)
    p = _probabilities(y, 4, 0.4, rng)
    pred = p.argmax(axis=1)
    result = evaluation.test_metrics(y, p, CINC, n_boot=50)
    labels = [0, 1, 2, 3]
    assert result["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert result["macro_f1"] == pytest.approx(
        f1_score(y, pred, labels=sorted(set(y)), average="macro", zero_division=0))
    assert result["macro_f1"] == classification_metrics(y, pred, CINC)["macro_f1"]
    wp, wr, wf, _ = precision_recall_fscore_support(y, pred, labels=labels, average="weighted",
                                                     zero_division=0)
    assert result["weighted"] == pytest.approx({"precision": wp, "recall": wr, "f1": wf})
    cp, cr, cf, cs = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for i, name in enumerate(CINC):
        assert result["per_class"][name] == pytest.approx(
            {"precision": cp[i], "recall": cr[i], "f1": cf[i], "support": cs[i]})
    assert result["cinc_f1"] == pytest.approx(np.mean(cf[:3]))
    assert result["n_records"] == 300
    assert result["classes"] == CINC


def test_hand_made_case_with_a_class_never_predicted_and_one_absent() -> None:
    # Truth: N N N A A O ; predicted: N N A A N O. Class "~" is neither true nor predicted.
    y = np.array([0, 0, 0, 1, 1, 2])
    result = evaluation.test_metrics(y, _one_hot([0, 0, 1, 1, 0, 2], 4), CINC, n_boot=100)
    assert result["accuracy"] == pytest.approx(4 / 6)
    f1 = {"N": 2 * 2 / (3 + 3), "A": 2 * 1 / (2 + 2), "O": 1.0}
    for name, value in f1.items():
        assert result["per_class"][name]["f1"] == pytest.approx(value)
    assert result["per_class"]["~"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Macro F1 over the three classes present in the truth, not a free zero for "~".
    assert result["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert result["cinc_f1"] == pytest.approx(np.mean(list(f1.values())))
    # Rows are true classes, columns predicted.
    assert result["confusion_matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_cinc_f1_only_with_n_a_and_o() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    p = _one_hot([0, 1, 2, 0, 2, 2], 3)
    with_cinc = evaluation.test_metrics(y, p, ["N", "A", "O"], n_boot=20)
    without = evaluation.test_metrics(y, p, ["N", "A", "X"], n_boot=20)
    assert "cinc_f1" in with_cinc and "cinc_f1" in with_cinc["ci95"]
    assert "cinc_f1" not in without and "cinc_f1" not in without["ci95"]
    assert set(without["ci95"]) == {"accuracy", "macro_f1"}


def test_result_is_plain_json() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 100)
    result = evaluation.test_metrics(y, _probabilities(y, 4, 0.3, rng), CINC, n_boot=30)
    assert set(result) == {"accuracy", "macro_f1", "cinc_f1", "weighted", "per_class", "classes",
                           "confusion_matrix", "n_records", "ci95"}
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(4)
    y_large = rng.integers(0, 4, 2000)
    p_large = _probabilities(y_large, 4, 0.5, rng)
    small = evaluation.test_metrics(y_large[:100], p_large[:100], CINC, n_boot=400, seed=1)
    large = evaluation.test_metrics(y_large, p_large, CINC, n_boot=400, seed=1)
    for result in (small, large):
        for name, (low, high) in result["ci95"].items():
            assert low <= result[name] <= high, name
    for name in ("accuracy", "macro_f1", "cinc_f1"):
        width_small = np.diff(small["ci95"][name])[0]
        width_large = np.diff(large["ci95"][name])[0]
        assert width_large < width_small, name
    again = evaluation.test_metrics(y_large[:100], p_large[:100], CINC, n_boot=400, seed=1)
    other = evaluation.test_metrics(y_large[:100], p_large[:100], CINC, n_boot=400, seed=2)
    assert again["ci95"] == small["ci95"]
    assert other["ci95"] != small["ci95"]


def test_bootstrap_macro_f1_uses_the_same_definition() -> None:
    # A perfect classifier scores 1 on every resample, even when a resample misses a class:
    # averaging over classes present in the truth never counts an absent class as zero.
    y = np.array([0] * 20 + [1] * 2 + [2] * 2 + [3])
    result = evaluation.test_metrics(y, _one_hot(list(y), 4), CINC, n_boot=200)
    assert result["ci95"]["macro_f1"] == [1.0, 1.0]
    assert result["ci95"]["accuracy"] == [1.0, 1.0]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        evaluation.test_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, CINC)
    with pytest.raises(ValueError):
        evaluation.test_metrics(np.array([], dtype=int), np.empty((0, 4)), CINC)
    with pytest.raises(ValueError):
        evaluation.test_metrics(np.array([0, 5]), np.ones((2, 4)) / 4, CINC)


# --- pictures --------------------------------------------------------------------------------

def _history(seed: int, epochs: int, start: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = np.clip(np.cumsum(rng.uniform(0, 0.1, epochs)), 0, 1)
    time_total = np.cumsum(rng.uniform(1, 3, epochs))
    return pd.DataFrame({TRAINING_ITERATION: np.arange(1, epochs + 1), "val_cinc_f1": score,
                         "val_loss": 1.5 - score, "time_total_s": time_total,
                         "timestamp": start + time_total})


def _search(n: int) -> tuple[TrialTable, dict[str, pd.DataFrame]]:
    histories = {f"t{i}": _history(i, 2 + i % 4, 1_700_000_000 + 5 * i) for i in range(n)}
    models = ["simple_cnn", "cnn_svm", "resnet1d"]
    # No trial set augmentation: that panel is skipped.
    trials = [TrialRecord(trial_id, "completed", len(history), best={"val_cinc_f1": history["val_cinc_f1"].max()},
                          config={"model": models[i % 3], "transform": "raw" if i % 2 else "stft"})
              for i, (trial_id, history) in enumerate(histories.items())]
    return _table(trials), histories


def _table(trials: list[TrialRecord]) -> TrialTable:
    return TrialTable.from_frame(pd.DataFrame([t.flat() for t in trials]))


def _is_png(data: bytes) -> bool:
    return len(data) > 1000 and data[:8] == PNG_MAGIC


def test_confusion_picture() -> None:
    assert _is_png(pictures.png(pictures.confusion_picture(
        [[50, 3, 2, 0], [4, 10, 1, 0], [6, 2, 20, 0], [1, 0, 2, 0]], CINC)))
    # A class with no true records and one never predicted: no division by zero.
    assert _is_png(pictures.png(pictures.confusion_picture([[3, 0, 0], [1, 0, 0], [0, 0, 0]], ["N", "A", "O"])))


def test_training_curves_picture() -> None:
    _, histories = _search(6)
    refit = [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3} for e in range(1, 6)]
    assert _is_png(pictures.png(pictures.training_curves_picture(refit, histories, "t3", "val_cinc_f1")))
    assert _is_png(pictures.png(pictures.training_curves_picture([], {}, "t3", "val_cinc_f1")))
    single = histories["t0"].drop(columns=["val_loss"]).head(1)
    assert _is_png(pictures.png(pictures.training_curves_picture([{"epoch": 1, "train_loss": 0.7}], {"t0": single},
                                                                 "t0", "val_cinc_f1")))


def test_search_overview_picture() -> None:
    table, histories = _search(6)
    assert _is_png(pictures.png(pictures.search_overview_picture(table, histories, "val_cinc_f1")))
    # No times: falls back to trial order. One trial, no config columns: one panel.
    untimed = {k: h.drop(columns=["timestamp", "time_total_s"]) for k, h in histories.items()}
    assert _is_png(pictures.png(pictures.search_overview_picture(table, untimed, "val_cinc_f1")))
    one = _table([TrialRecord("t0", "completed", 1, config={}, best={"val_cinc_f1": 0.5})])
    assert _is_png(pictures.png(pictures.search_overview_picture(one, {}, "val_cinc_f1")))
    none = TrialTable.from_frame(pd.DataFrame())
    assert _is_png(pictures.png(pictures.search_overview_picture(none, {}, "val_cinc_f1")))


def test_best_so_far_uses_elapsed_time() -> None:
    _, histories = _search(3)
    time, values = timed_reports(histories, "val_cinc_f1")
    assert time.min() >= 0 and np.all(np.diff(time) >= 0)
    assert len(values) == sum(len(h) for h in histories.values())


# --- the run folder's files ------------------------------------------------------------------

def test_write_report_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 80)
    test = evaluation.test_metrics(y, _probabilities(y, 4, 0.3, rng), CINC, n_boot=20)
    validation = {"val_cinc_f1": np.float64(0.8), "val_loss": 0.4, "odd": float("nan")}
    config = {"model": "simple_cnn", "lr": 1e-3, "svm_gamma": "scale"}
    run = RunFolder(tmp_path / "run")
    written = run.write_report(test, validation, config, 7)
    loaded = json.loads((run.path / "report.json").read_text())
    assert loaded == written == run.report()
    assert set(loaded) == {"test", "validation", "config", "epochs"}
    assert loaded["test"] == test and loaded["config"] == config and loaded["epochs"] == 7
    assert loaded["validation"] == {"val_cinc_f1": 0.8, "val_loss": 0.4, "odd": None}
    assert evaluation.headline(test).startswith(f"accuracy {test['accuracy']:.3f} [")


def test_the_refits_files_are_written_through_the_run_folder(tmp_path) -> None:
    run = RunFolder(tmp_path / "run")
    predictions = pd.DataFrame({"record": ["a", "b"], "true": ["N", "A"], "predicted": ["N", "N"],
                                "p_N": [0.9, 0.6], "p_A": [0.1, 0.4]})
    assert run.write_predictions(predictions) == run.path / "test_predictions.csv"
    pd.testing.assert_frame_equal(pd.read_csv(run.path / "test_predictions.csv"), predictions)
    png = pictures.png(pictures.confusion_picture([[1, 0], [0, 1]], ["N", "A"]))
    for name in PICTURES:
        assert run.write_picture(name, png).read_bytes() == png
    with pytest.raises(ValueError, match="pictures"):
        run.write_picture("other", png)  # type: ignore[arg-type]  # what the type refuses, the call does too
    assert run.write_html_report("<p>page</p>").read_text() == "<p>page</p>"
    assert sorted(p.name for p in run.path.iterdir()) == sorted(
        ["test_predictions.csv", "report.html", *(f"{name}.png" for name in PICTURES)])  # no .partial left
