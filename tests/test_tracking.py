"""MLflow tracking (`--mlflow`, ecg_tune/tracking.py): a real small search logs a parent run with its
trials nested under it and the refit on the parent; a later refit logs to the same parent; a
search without --mlflow never imports MLflow."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, run_script

from ecg_tune.runs import RunFolder
from ecg_tune.tracking import PARENT_TAG, metric_name, test_metrics_flat

mlflow = pytest.importorskip("mlflow", reason='MLflow is not installed (pip install "ecg-tune[tracking]")')

PICTURES = ("confusion_matrix.png", "training_curves.png", "search_overview.png")



@pytest.fixture(scope="module")
def tracked(refitted_smoke_run: tuple[Path, str]) -> Path:
    """The shared smoke search with --mlflow (the default URI) and its refit (conftest.py)."""
    out, stdout = refitted_smoke_run
    assert "mlflow: run " in stdout and "mlflow: test metrics and artifacts logged" in stdout
    return out


def _client(out: Path) -> mlflow.MlflowClient:
    record = RunFolder(out).tracking()
    assert record is not None
    assert record.tracking_uri == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=record.tracking_uri)


def _runs(out: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True)


def test_the_search_is_a_parent_run_with_the_trials_nested(tracked: Path) -> None:
    record = RunFolder(tracked).tracking()
    assert record is not None
    client = _client(tracked)
    parent = client.get_run(record.parent_run_id)
    assert parent.info.run_name == "run" and parent.info.status == "FINISHED"
    assert parent.data.tags["run_folder"] == str(tracked.resolve())
    params = parent.data.params
    assert params["space"] == "smoke" and params["data"] == "synthetic:60" and params["seed"] == "0"
    assert params["metric"] == "val_cinc_f1" and params["num_samples"] == "3" and params["max_epochs"] == "2"

    runs = _runs(tracked)
    assert len(runs) == 4  # parent + 3 trials
    children = runs[runs[f"tags.{PARENT_TAG}"] == record.parent_run_id]
    trials = pd.read_csv(tracked / "trials.csv").set_index("trial_id")
    assert sorted(children["tags.trial_id"]) == sorted(trials.index)
    for _, child in children.iterrows():
        row = trials.loc[child["tags.trial_id"]]
        for key in ("model", "transform", "augmentation", "input_length", "lr", "batch_size"):
            assert child[f"params.{key}"] == str(row[f"config/{key}"]), key
        # every epoch the trial reported, step = epoch, the values Tune recorded
        history = client.get_metric_history(child["run_id"], "val_cinc_f1")
        assert [m.step for m in history] == list(range(1, int(row["epochs"]) + 1))
        assert history[-1].value == pytest.approx(row["final/val_cinc_f1"])
        assert [m.step for m in client.get_metric_history(child["run_id"], "train_loss")] == [m.step for m in history]
        assert child["status"] == "FINISHED"
        assert not any(c.startswith("metrics.") and c.split(".", 1)[1] in {"pid", "timestamp"} for c in child.index
                       if pd.notna(child[c]))


def test_the_refit_logs_test_metrics_and_files_to_the_parent(tracked: Path) -> None:
    record = RunFolder(tracked).tracking()
    assert record is not None
    client = _client(tracked)
    metrics = client.get_run(record.parent_run_id).data.metrics
    test = json.loads((tracked / "report.json").read_text())["test"]
    for key in ("accuracy", "macro_f1", "cinc_f1"):
        assert metrics[f"test_{key}"] == pytest.approx(test[key])
        low, high = test["ci95"][key]
        assert metrics[f"test_{key}_ci_low"] == pytest.approx(low)
        assert metrics[f"test_{key}_ci_high"] == pytest.approx(high)
    best = json.loads((tracked / "best_config.json").read_text())
    assert metrics["best_val_cinc_f1"] == pytest.approx(best["metrics"]["val_cinc_f1"])
    files = {a.path for a in client.list_artifacts(record.parent_run_id)}
    assert {*PICTURES, "report.html", "model"} <= files
    model = {Path(a.path).name for a in client.list_artifacts(record.parent_run_id, "model")}
    assert {p.name for p in (tracked / "model").iterdir()} <= model


@pytest.mark.slow  # a second refit in its own process, about 25 s: the default run neared 10 minutes
def test_a_later_refit_logs_to_the_same_parent(tracked: Path) -> None:
    record = RunFolder(tracked).tracking()
    assert record is not None
    result = run_script("refit.py", "--run", str(tracked))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"logged to run {record.parent_run_id}" in result.stdout
    client = _client(tracked)
    assert len(client.get_metric_history(record.parent_run_id, "test_accuracy")) == 2  # the search's refit and this
    assert len(_runs(tracked)) == 4  # no new run


# Records which files import MLflow: Ray 2.60 itself imports it whenever a Tune run has callbacks
# (ray/air/_internal/usage.py counts them by class, importing ray.air.integrations.mlflow, which
# tries `import mlflow`), so "mlflow in sys.modules" cannot tell; what matters is that no module
# of this package imports it and no store is opened.
_WHO_IMPORTS = """
import sys, traceback
importers = set()
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mlflow":
            for frame in reversed(traceback.extract_stack()[:-1]):
                if "importlib" in frame.filename or "/mlflow/" in frame.filename:
                    continue
                importers.add(frame.filename)
                break
        return None
sys.meta_path.insert(0, Watch())
from ecg_tune.cli import main
rc = main(sys.argv[1:])
print("IMPORTERS", sorted(importers))
sys.exit(rc)
"""


@pytest.mark.slow  # a second search, about 30 s here (the file's default run stays near 90 s)
def test_a_search_without_mlflow_never_imports_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", _WHO_IMPORTS, "search", "--space", "smoke", "--data",
                             "synthetic:60", "--out", str(out), "--num-samples", "1", "--max-epochs", "1", "--cv", "1",
                             "--no-refit"], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("IMPORTERS")]
    assert not [name for name in ast.literal_eval(line.removeprefix("IMPORTERS ")) if "/ecg_tune/" in name], line
    assert (out / "best_config.json").is_file()
    assert not (out / "mlflow.db").exists() and RunFolder(out).tracking() is None


def test_metric_names_keep_to_what_mlflow_accepts() -> None:
    assert metric_name("val_f1_~") == "val_f1__" and metric_name("val_f1_N") == "val_f1_N"
    flat = test_metrics_flat({"accuracy": 0.5, "ci95": {"accuracy": [0.4, 0.6]}, "n_records": 10,
                              "weighted": {"f1": 0.3}, "per_class": {"~": {"precision": 1, "recall": 0, "f1": 0}}})
    assert flat == {"test_accuracy": 0.5, "test_n_records": 10.0, "test_accuracy_ci_low": 0.4,
                    "test_accuracy_ci_high": 0.6, "test_weighted_f1": 0.3, "test_class___precision": 1.0,
                    "test_class___recall": 0.0, "test_class___f1": 0.0}
