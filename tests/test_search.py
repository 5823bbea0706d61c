"""The search on a small real local Ray cluster (Ray 2.60 has no local mode).

One module-scoped cluster with logical resources (4 CPUs on 2 cores, 1 GPU without CUDA) serves
the in-process tests; the tests that need a cluster of another shape (none with a GPU) run the
command line in a subprocess (the smoke space end to end is in test_refit.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_tune.cli import main
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.pipeline import PipelineOptions, run_pipeline
from ecg_tune.search.adapt import DataFacts, adapt
from ecg_tune.search.plan import SearchOptions, make_plan
from ecg_tune.search.space_file import load_space

ROOT = Path(__file__).resolve().parents[1]
SEARCH = [sys.executable, str(ROOT / "scripts" / "search.py")]


@pytest.fixture(scope="module")
def small():
    return prepare("synthetic:80", progress=False)


def write_space(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def search(dataset, space_path, out: Path, **options):
    options.setdefault("cv", 1)  # cross-validation has its own tests (test_cv.py): one fit a trial here
    result = run_pipeline(PipelineOptions(search=SearchOptions(out=out, **options), space=space_path, refit=None),
                          dataset=dataset)
    return result, result.plan, result.best, pd.read_csv(out / "trials.csv")


TINY = """
model: simple_cnn
input_length: 600
batch_size: 16
transform: {type: choice, values: [none, wavelet]}
wavelet: {type: choice, values: [db2, haar], when: {transform: wavelet}}
levels: {type: int, low: 2, high: 4, when: {transform: wavelet}}
lr: {type: float, low: 0.0001, high: 0.01, log: true}
"""


def test_optuna_asha_conditional_space_and_exports(ray_cluster, small, tmp_path: Path) -> None:
    space = write_space(tmp_path / "tiny.yaml", TINY + "search: {max_epochs: 4, grace_period: 1, reduction_factor: 2}\n")
    _, plan, best, trials = search(small, space, tmp_path / "out", num_samples=8, cpus_per_trial=1,
                                   max_concurrent=2)
    assert plan.metric == "val_cinc_f1" and plan.gpus_per_trial == 0.25
    assert len(trials) == 8
    for column in ("trial_id", "status", "epochs", "best_epoch", "config/transform", "config/lr",
                   "final/val_cinc_f1", "best/val_cinc_f1", "best/val_loss", "final/train_loss"):
        assert column in trials.columns, column
    plain = trials[trials["config/transform"] == "none"]
    wavelet = trials[trials["config/transform"] == "wavelet"]
    assert len(plain) and len(wavelet)
    assert plain["config/levels"].isna().all() and plain["config/wavelet"].isna().all()
    assert wavelet["config/levels"].notna().all()
    # ASHA stops weak trials at a rung before max_epochs.
    assert (trials["status"] == "stopped").any() and (trials["epochs"] < 4).any()
    assert set(trials["status"]) <= {"completed", "stopped"}
    # best_config.json: the winner's sampled config, its peak epoch and metrics there.
    saved = json.loads((tmp_path / "out" / "best_config.json").read_text())
    assert saved["metrics"]["val_cinc_f1"] == pytest.approx(trials["best/val_cinc_f1"].max())
    assert ("levels" in saved["config"]) == (saved["config"]["transform"] == "wavelet")
    assert 1 <= saved["epoch"] <= 4 and saved["config"]["epochs"] == 4
    assert pd.read_parquet(tmp_path / "out" / "trials.parquet").shape == trials.shape
    # Whole numbers stay whole where a parameter is absent from some trials.
    raw = pd.read_csv(tmp_path / "out" / "trials.csv", dtype=str)
    assert raw["config/levels"].dropna().str.fullmatch(r"\d+").all(), raw["config/levels"].tolist()
    assert str(pd.read_parquet(tmp_path / "out" / "trials.parquet")["config/levels"].dtype) == "Int64"


def test_a_loss_metric_ranks_by_the_lowest(ray_cluster, small, tmp_path: Path) -> None:
    space = write_space(tmp_path / "loss.yaml", TINY + "search: {max_epochs: 2}\n")
    _, plan, best, trials = search(small, space, tmp_path / "out", num_samples=3, cpus_per_trial=1,
                                   scheduler="fifo", metric="val_loss", searcher="random")
    assert plan.mode == "min" and best.metric == "val_loss"
    assert best.score == pytest.approx(trials["best/val_loss"].min())
    assert trials["best/val_loss"].min() < trials["best/val_loss"].max()  # a real choice was made


def test_fractional_gpus_run_four_trials_at_once(ray_cluster, small, tmp_path: Path) -> None:
    space = write_space(tmp_path / "gpu.yaml", TINY + "search: {max_epochs: 2}\n")
    result, plan, _, trials = search(small, space, tmp_path / "out", num_samples=4, cpus_per_trial=1,
                                     scheduler="fifo")
    assert plan.gpus_per_trial == 0.25 and plan.max_concurrent == 4
    spans = []
    for history in result.run.histories().values():
        start = history["timestamp"].iloc[0] - history["time_this_iter_s"].iloc[0]
        spans.append((start, history["timestamp"].iloc[-1]))
    latest_start = max(s for s, _ in spans)
    assert sum(s <= latest_start <= e + 1 for s, e in spans) == 4, spans


def test_a_trial_that_raises_does_not_end_the_search(ray_cluster, small, tmp_path: Path) -> None:
    # svm_max_train 1 leaves cnn_svm's SVM stage fewer rows than classes: those trials raise.
    space = write_space(tmp_path / "raise.yaml", """
model: {type: choice, values: [simple_cnn, cnn_svm]}
svm_max_train: 1
input_length: 600
search: {max_epochs: 1}
""")
    _, _, best, trials = search(small, space, tmp_path / "out", num_samples=2, searcher="random",
                                scheduler="fifo", max_concurrent=2, max_failures=1)
    assert "errored" in set(trials["status"]) and "completed" in set(trials["status"])
    assert best.config["model"] == "simple_cnn"


def test_resources_follow_the_cluster() -> None:
    space = load_space("smoke")
    facts = DataFacts.from_dataset(prepare("synthetic:40", progress=False))
    assert make_plan(SearchOptions(out=Path(".")), adapt(space, facts), 2, 0).gpus_per_trial == 0
    plan = make_plan(SearchOptions(out=Path(".")), adapt(space, facts), 8, 1)
    assert plan.gpus_per_trial == 0.25 and plan.max_concurrent == min(4, plan.num_samples)
    with pytest.raises(ConfigError, match="no GPU"):
        make_plan(SearchOptions(out=Path("."), gpus_per_trial=0.5), adapt(space, facts), 2, 0)


def test_a_time_budget_is_the_limit_unless_trials_are_capped() -> None:
    space = load_space("full")  # time_budget 480 s, num_samples 40
    facts = DataFacts.from_dataset(prepare("synthetic:40", progress=False))
    plan = make_plan(SearchOptions(out=Path(".")), adapt(space, facts), 2, 0)
    assert plan.num_samples is None and plan.time_budget == 480
    assert "until the time budget of 480 s is spent" in plan.describe()
    capped = make_plan(SearchOptions(out=Path("."), num_samples=7), adapt(space, facts), 2, 0)
    assert capped.num_samples == 7 and "at most 7 trials or 480 s, whichever comes first" in capped.describe()
    no_budget = make_plan(SearchOptions(out=Path(".")), adapt(load_space("smoke"), facts), 2, 0)
    assert no_budget.num_samples == 4 and no_budget.time_budget is None


def test_time_fidelity_puts_asha_rungs_on_training_seconds(tmp_path: Path) -> None:
    from ecg_tune.search.tuner import _scheduler

    facts = DataFacts.from_dataset(prepare("synthetic:40", progress=False))
    budgeted = write_space(tmp_path / "t.yaml", TINY + "search: {max_epochs: 30, time_budget: 240, fidelity: time}\n")
    plan = make_plan(SearchOptions(out=Path(".")), adapt(load_space(str(budgeted)), facts), 2, 0)
    assert plan.fidelity == "time" and plan.grace_seconds == 10  # a 24th of 240 s
    assert "ASHA on training time (grace 10 s" in plan.describe() and "at most 30 epochs" in plan.describe()
    asha = _scheduler(plan)
    assert asha._time_attr == "time_total_s" and asha._brackets[0]._rungs[-1][0] == 10
    given = write_space(tmp_path / "g.yaml", TINY + "search: {fidelity: time, grace_seconds: 7}\n")
    assert make_plan(SearchOptions(out=Path(".")), adapt(load_space(str(given)), facts), 2, 0).grace_seconds == 7
    epochs = _scheduler(make_plan(SearchOptions(out=Path(".")), adapt(load_space("smoke"), facts), 2, 0))
    assert epochs._time_attr == "training_iteration"


def test_a_budget_fills_its_time(ray_cluster, small, tmp_path: Path) -> None:
    # num_samples 2 in the file, but a 10 s budget: trials keep starting until it is spent.
    space = write_space(tmp_path / "budget.yaml", TINY + "search: {max_epochs: 1, num_samples: 2, time_budget: 10}\n")
    started = time.time()
    _, plan, _, trials = search(small, space, tmp_path / "out", cpus_per_trial=1, max_concurrent=2,
                                scheduler="fifo", searcher="random")
    assert plan.num_samples is None
    assert len(trials) > 2, len(trials)
    assert time.time() - started >= 0.9 * 10


def test_start_points_run_first_as_given(ray_cluster, small, tmp_path: Path) -> None:
    space = write_space(tmp_path / "start.yaml", "start:\n  - {transform: none, lr: 0.000777}\n"
                        "  - {transform: wavelet, wavelet: haar, levels: 3}\n" + TINY + "search: {max_epochs: 1}\n")
    search(small, space, tmp_path / "out", num_samples=3, cpus_per_trial=1, max_concurrent=1, scheduler="fifo")
    params = [json.loads(p.read_text()) for p in (tmp_path / "out" / "experiment").glob("*/params.json")]
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    first, second = trials.iloc[0], trials.iloc[1]  # Tune lists trials in creation order
    assert first["config/transform"] == "none" and first["config/lr"] == pytest.approx(0.000777)
    assert second["config/transform"] == "wavelet" and second["config/wavelet"] == "haar"
    assert int(second["config/levels"]) == 3
    assert any(p.get("lr") == 0.000777 for p in params)


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*SEARCH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_DEDUP_LOGS": "0"})


@pytest.mark.slow  # about 1.5-2.5 minutes here; run with `python -m pytest -m slow`
def test_resume_keeps_finished_trials(tmp_path: Path) -> None:
    space = write_space(tmp_path / "slow.yaml", TINY.replace("input_length: 600", "input_length: 2000")
                        + "search: {max_epochs: 3, num_samples: 3}\n")
    out = tmp_path / "run"
    args = ["--space", str(space), "--data", "synthetic:80", "--out", str(out), "--scheduler", "fifo",
            "--max-concurrent", "1", "--no-refit"]
    process = subprocess.Popen([*SEARCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finished = None
    deadline = time.time() + 300
    while time.time() < deadline and finished is None:
        time.sleep(1)
        for result_file in (out / "experiment").glob("*/result.json"):
            if len(result_file.read_text().splitlines()) >= 3:
                finished = result_file
    assert finished is not None, "no trial finished in time"
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    lines_before = len(finished.read_text().splitlines())
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and (trials["epochs"] == 3).all()
    assert len(finished.read_text().splitlines()) == lines_before, "a finished trial was run again"


def test_dry_run_shows_the_plan_without_training(tmp_path: Path, capsys) -> None:
    assert main(["search", "--dry-run", "--space", "full", "--data", "synthetic:60",
                 "--out", str(tmp_path / "dry")]) == 0
    out = capsys.readouterr().out
    assert "levels" in out and "plan on this machine" in out
    assert not (tmp_path / "dry").exists()


def ucr_like(path: Path, n: int = 60, length: int = 96) -> Path:
    rng = np.random.default_rng(0)
    t = np.linspace(0, 1, length)
    rows = [np.concatenate([[i % 2], np.sin(2 * np.pi * (3 + i % 2) * t) + 0.1 * rng.standard_normal(length)])
            for i in range(n)]
    np.savetxt(path, np.array(rows))
    return path


@pytest.mark.parametrize("space", ["full", "seed_grid", "smoke"])
def test_every_shipped_space_dry_runs_on_short_and_long_records(space: str, tmp_path: Path, capsys) -> None:
    beats = ucr_like(tmp_path / "Beats_TRAIN.txt")
    for data in (str(beats), "synthetic:60"):
        assert main(["search", "--dry-run", "--space", space, "--data", data]) == 0, data
    assert "plan on this machine" in capsys.readouterr().out


def test_bad_space_file_is_a_short_error(tmp_path: Path) -> None:
    bad = write_space(tmp_path / "bad.yaml", "model:\n  type: choice\n  values: [no_such_model]\n")
    result = run_cli("--dry-run", "--space", str(bad), "--data", "synthetic:60", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no_such_model" in result.stderr and "bad.yaml" in result.stderr
