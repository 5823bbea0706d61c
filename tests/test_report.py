"""The refit report: test scores against sklearn, bootstrap intervals, pictures, report.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

# Imported as a module: a bare `test_metrics` name in this file would look like a test to pytest.
from ecg_tune import report
from ecg_tune.training.metrics import classification_metrics

CINC = ["N", "A", "O", "~"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _probabilities(y: np.ndarray, k: int, skill: float, rng: np.random.Generator) -> np.ndarray:
    """Random class probabilities that lean towards the truth by `skill`."""
    p = rng.dirichlet(np.ones(k), size=len(y))
    p[np.arange(len(y)), y] += skill
    return p / p.sum(axis=1, keepdims=True)


def _one_hot(pred: list[int], k: int) -> np.ndarray:
    return np.eye(k)[np.asarray(pred)]


def _is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_sklearn_on_random_predictions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 300)
    p = _probabilities(y, 4, 0.4, rng)
    pred = p.argmax(axis=1)
    result = report.test_metrics(y, p, CINC, n_boot=50)
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
    result = report.test_metrics(y, _one_hot([0, 0, 1, 1, 0, 2], 4), CINC, n_boot=100)
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
    with_cinc = report.test_metrics(y, p, ["N", "A", "O"], n_boot=20)
    without = report.test_metrics(y, p, ["N", "A", "X"], n_boot=20)
    assert "cinc_f1" in with_cinc and "cinc_f1" in with_cinc["ci95"]
    assert "cinc_f1" not in without and "cinc_f1" not in without["ci95"]
    assert set(without["ci95"]) == {"accuracy", "macro_f1"}


def test_result_is_plain_json() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 100)
    result = report.test_metrics(y, _probabilities(y, 4, 0.3, rng), CINC, n_boot=30)
    assert set(result) == {"accuracy", "macro_f1", "cinc_f1", "weighted", "per_class", "classes",
                           "confusion_matrix", "n_records", "ci95"}
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_bootstrap_intervals() -> None:
    rng = np.random.default_rng(4)
    y_large = rng.integers(0, 4, 2000)
    p_large = _probabilities(y_large, 4, 0.5, rng)
    small = report.test_metrics(y_large[:100], p_large[:100], CINC, n_boot=400, seed=1)
    large = report.test_metrics(y_large, p_large, CINC, n_boot=400, seed=1)
    for result in (small, large):
        for name, (low, high) in result["ci95"].items():
            assert low <= result[name] <= high, name
    for name in ("accuracy", "macro_f1", "cinc_f1"):
        width_small = np.diff(small["ci95"][name])[0]
        width_large = np.diff(large["ci95"][name])[0]
        assert width_large < width_small, name
    again = report.test_metrics(y_large[:100], p_large[:100], CINC, n_boot=400, seed=1)
    other = report.test_metrics(y_large[:100], p_large[:100], CINC, n_boot=400, seed=2)
    assert again["ci95"] == small["ci95"]
    assert other["ci95"] != small["ci95"]


def test_bootstrap_macro_f1_uses_the_same_definition() -> None:
    # A perfect classifier scores 1 on every resample, even when a resample misses a class:
    # averaging over classes present in the truth never counts an absent class as zero.
    y = np.array([0] * 20 + [1] * 2 + [2] * 2 + [3])
    result = report.test_metrics(y, _one_hot(list(y), 4), CINC, n_boot=200)
    assert result["ci95"]["macro_f1"] == [1.0, 1.0]
    assert result["ci95"]["accuracy"] == [1.0, 1.0]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        report.test_metrics(np.array([0, 1]), np.ones((2, 3)) / 3, CINC)
    with pytest.raises(ValueError):
        report.test_metrics(np.array([], dtype=int), np.empty((0, 4)), CINC)
    with pytest.raises(ValueError):
        report.test_metrics(np.array([0, 5]), np.ones((2, 4)) / 4, CINC)


# --- pictures --------------------------------------------------------------------------------

def _history(seed: int, epochs: int, start: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    score = np.clip(np.cumsum(rng.uniform(0, 0.1, epochs)), 0, 1)
    time_total = np.cumsum(rng.uniform(1, 3, epochs))
    return pd.DataFrame({"training_iteration": np.arange(1, epochs + 1), "val_cinc_f1": score,
                         "val_loss": 1.5 - score, "time_total_s": time_total,
                         "timestamp": start + time_total})


def _search(n: int) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    histories = {f"t{i}": _history(i, 2 + i % 4, 1_700_000_000 + 5 * i) for i in range(n)}
    models = ["simple_cnn", "cnn_svm", "resnet1d"]
    trials = pd.DataFrame({
        "trial_id": list(histories),
        "config/model": [models[i % 3] for i in range(n)],
        "config/transform": ["raw" if i % 2 else "stft" for i in range(n)],
        "config/augmentation": [np.nan] * n,  # never sampled: that panel is skipped
        "best/val_cinc_f1": [h["val_cinc_f1"].max() for h in histories.values()],
    })
    return trials, histories


def test_confusion_picture(tmp_path) -> None:
    path = tmp_path / "confusion_matrix.png"
    report.plot_confusion([[50, 3, 2, 0], [4, 10, 1, 0], [6, 2, 20, 0], [1, 0, 2, 0]], CINC, path)
    assert _is_png(path)
    # A class with no true records and one never predicted: no division by zero.
    degenerate = tmp_path / "degenerate.png"
    report.plot_confusion([[3, 0, 0], [1, 0, 0], [0, 0, 0]], ["N", "A", "O"], degenerate)
    assert _is_png(degenerate)


def test_training_curves_picture(tmp_path) -> None:
    trials, histories = _search(6)
    refit = [{"epoch": e, "train_loss": 1.0 / e, "lr": 1e-3} for e in range(1, 6)]
    path = tmp_path / "training_curves.png"
    report.plot_training_curves(refit, histories["t3"], histories, "val_cinc_f1", path)
    assert _is_png(path)
    empty = tmp_path / "empty.png"
    report.plot_training_curves([], None, {}, "val_cinc_f1", empty)
    assert _is_png(empty)
    one = tmp_path / "one.png"
    single = histories["t0"].drop(columns=["val_loss"]).head(1)
    report.plot_training_curves([{"epoch": 1, "train_loss": 0.7}], single, {"t0": single},
                                "val_cinc_f1", one)
    assert _is_png(one)


def test_search_overview_picture(tmp_path) -> None:
    trials, histories = _search(6)
    path = tmp_path / "search_overview.png"
    report.plot_search_overview(trials, histories, "val_cinc_f1", path)
    assert _is_png(path)
    # No times: falls back to trial order. One trial, no config columns: one panel.
    untimed = {k: h.drop(columns=["timestamp", "time_total_s"]) for k, h in histories.items()}
    report.plot_search_overview(trials, untimed, "val_cinc_f1", tmp_path / "untimed.png")
    assert _is_png(tmp_path / "untimed.png")
    report.plot_search_overview(trials[["trial_id", "best/val_cinc_f1"]].head(1), {},
                                "val_cinc_f1", tmp_path / "one.png")
    assert _is_png(tmp_path / "one.png")
    report.plot_search_overview(pd.DataFrame(), {}, "val_cinc_f1", tmp_path / "none.png")
    assert _is_png(tmp_path / "none.png")


def test_best_so_far_uses_elapsed_time() -> None:
    _, histories = _search(3)
    time, values = report.timed_reports(histories, "val_cinc_f1")
    assert time.min() >= 0 and np.all(np.diff(time) >= 0)
    assert len(values) == sum(len(h) for h in histories.values())


# --- report.json -----------------------------------------------------------------------------

def test_write_report_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 80)
    test = report.test_metrics(y, _probabilities(y, 4, 0.3, rng), CINC, n_boot=20)
    validation = {"val_cinc_f1": np.float64(0.8), "val_loss": 0.4, "odd": float("nan")}
    config = {"model": "simple_cnn", "lr": 1e-3, "svm_gamma": "scale"}
    written = report.write_report(tmp_path / "report.json", test, validation, config, 7)
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded == written
    assert set(loaded) == {"test", "validation", "config", "epochs"}
    assert loaded["test"] == test and loaded["config"] == config and loaded["epochs"] == 7
    assert loaded["validation"] == {"val_cinc_f1": 0.8, "val_loss": 0.4, "odd": None}
    # A folder gets report.json inside it.
    report.write_report(tmp_path, test, {}, config, 7)
    assert json.loads((tmp_path / "report.json").read_text())["validation"] == {}
