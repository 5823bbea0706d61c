"""Faults that lose nothing (issue 16): a search hit by a fault finishes without training again
what it had reported.

- a trial worker SIGKILLed mid-epoch: Tune restarts the trial from its last checkpoint;
- the driver SIGKILLed mid-search: `--resume` finishes it, TPE going on with the restored study,
  a time budget giving only what was left;
- a corrupt checkpoint: the trial warns and falls back to an older checkpoint, or starts again.

Processes are killed precisely: a worker by the pid Tune writes into each of its trial's results,
a driver (the CLI in a session of its own) by its pid, then whatever Ray left of that session.
The default run has the cheap ones (the trainable and the searcher driven directly, no cluster);
the searches are `slow`: `python3 -m pytest -q -m slow tests/test_faults_ray.py`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from conftest import wait_for
from ray import tune

from ecg_tune.data import prepare
from ecg_tune.pipeline import PipelineOptions, PipelineResult, run_pipeline
from ecg_tune.search.optuna_search import LOST, TUNE_TRIAL_ID, PruningAwareOptunaSearch, saved_state
from ecg_tune.search.plan import SearchOptions
from ecg_tune.search.trainable import STATE_FILE, WARNINGS_FILE, train_trial
from ecg_tune.training.folds import choose_validation

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic():
    return prepare("synthetic:200", progress=False)


# --- the trainable alone, with Tune's two calls played by a fake (no cluster: the fast test) ---

class FakeTune:
    """`tune.get_checkpoint` and `tune.report` as a trial sees them: checkpoints are copied into
    the trial folder as checkpoint_<index> (Tune's layout), results kept in order."""

    def __init__(self, trial_dir: Path, restore_from: str | None = None) -> None:
        self.trial_dir = trial_dir
        self.restore_from = restore_from
        self.results: list[dict] = []

    def get_checkpoint(self) -> tune.Checkpoint | None:
        return None if self.restore_from is None else tune.Checkpoint.from_directory(
            str(self.trial_dir / self.restore_from))

    def report(self, metrics: dict, checkpoint: tune.Checkpoint | None = None) -> None:
        assert checkpoint is not None
        index = max((int(p.name.split("_")[1]) for p in self.trial_dir.glob("checkpoint_*")), default=-1) + 1
        shutil.copytree(checkpoint.path, self.trial_dir / f"checkpoint_{index:06d}")
        self.results.append(dict(metrics))


def run_trial(monkeypatch: pytest.MonkeyPatch, fake: FakeTune, dataset, epochs: int) -> list[dict]:
    monkeypatch.setattr(tune, "get_checkpoint", fake.get_checkpoint)
    monkeypatch.setattr(tune, "report", fake.report)
    config = {"model": "simple_cnn", "input_length": 600, "batch_size": 16, "lr": 0.003}
    train_trial(config, dataset.tensors, choose_validation(dataset, 1, 0).folds, max_epochs=epochs, seed=0)
    return fake.results


def test_an_unreadable_checkpoint_falls_back_to_an_older_one_or_restarts(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    dataset = prepare("synthetic:60", progress=False)
    trial = tmp_path / "trial"
    trial.mkdir()
    first = run_trial(monkeypatch, FakeTune(trial), dataset, epochs=3)
    assert [r["training_iteration"] for r in first] == [1, 2, 3]

    def state(name: str) -> Path:
        return trial / name / STATE_FILE

    # The latest checkpoint (epoch 3) truncated, two older ones kept: the trial resumes after
    # epoch 2 and trains epoch 3 again exactly as the first time (randomness follows seed and
    # epoch), then epoch 4 (checkpoints 3 and 4).
    state("checkpoint_000002").write_bytes(state("checkpoint_000002").read_bytes()[:1000])
    caplog.set_level(logging.WARNING, logger="ecg_tune.search.trainable")
    resumed = run_trial(monkeypatch, FakeTune(trial, "checkpoint_000002"), dataset, epochs=4)
    assert [(r["epoch"], r["training_iteration"]) for r in resumed] == [(3, 3), (4, 4)]
    assert resumed[0]["val_loss"] == pytest.approx(first[2]["val_loss"], rel=1e-5)
    assert "checkpoint_000002 is unreadable (RuntimeError: PytorchStreamReader" in caplog.text
    warned = (trial / WARNINGS_FILE).read_text()
    assert str(trial / "checkpoint_000002") in warned and "checkpoint_000001" not in warned

    # Restored from checkpoint 3 with every older one spoilt, each another way (random bytes, a
    # missing file, a readable file that is no loop state): the trial starts again from epoch 1,
    # its iterations its epochs. Checkpoint 4 plays one a worker wrote before dying, whose
    # result Tune never saw (a higher index than the one restored): not a fallback.
    state("checkpoint_000003").write_bytes(os.urandom(state("checkpoint_000003").stat().st_size))
    state("checkpoint_000001").unlink()
    torch.save({"folds": []}, state("checkpoint_000000"))
    caplog.clear()
    restarted = run_trial(monkeypatch, FakeTune(trial, "checkpoint_000003"), dataset, epochs=2)
    assert [(r["epoch"], r["training_iteration"]) for r in restarted] == [(1, 1), (2, 2)]
    assert restarted[0]["val_loss"] == pytest.approx(first[0]["val_loss"], rel=1e-5)
    for name in ("checkpoint_000003", "checkpoint_000002", "checkpoint_000001", "checkpoint_000000"):
        assert f"{name} is unreadable" in caplog.text
    assert "not a 1-fold loop state" in caplog.text and "checkpoint_000004" not in caplog.text
    assert "no readable checkpoint left: the trial starts again from epoch 1" in caplog.text
    assert "starts again from epoch 1" in (trial / WARNINGS_FILE).read_text()


def learning_rate_space(trial: optuna.trial.Trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)


def test_a_suggestion_lost_with_the_driver_is_failed_in_a_database_study(tmp_path: Path) -> None:
    """Tune's searcher save predates a suggestion; the driver dies; on restore that trial, left
    RUNNING in the sqlite study, is told FAIL; a trial the save knew stays in play, and a running
    trial of another search sharing the study is left alone."""
    url = f"sqlite:///{tmp_path / 'study.db'}"

    def searcher() -> PruningAwareOptunaSearch:
        return PruningAwareOptunaSearch(space=learning_rate_space,
                                        metric="score", mode="max", max_epochs=2, study_name="shared",
                                        storage=optuna.storages.RDBStorage(url),
                                        sampler=optuna.samplers.TPESampler(seed=0))

    ours, other = searcher(), searcher()
    tuner_copy = pickle.loads(pickle.dumps(ours))  # as tuner.pkl holds it
    assert ours.suggest("known") and other.suggest("elsewhere")
    ours.on_trial_result("known", {"score": 0.5, "training_iteration": 1})
    folder = tmp_path / "experiment"
    folder.mkdir()
    ours.save_to_dir(str(folder), session_str="last")  # Tune's last save before the kill
    assert ours.suggest("lost")  # then the driver dies

    tuner_copy.restore_from_dir(str(folder))  # what --resume does
    trials = {t.user_attrs[TUNE_TRIAL_ID]: t for t in optuna.load_study(study_name="shared", storage=url).trials}
    assert trials["lost"].state == optuna.trial.TrialState.FAIL and LOST in trials["lost"].user_attrs
    assert trials["known"].state == trials["elsewhere"].state == optuna.trial.TrialState.RUNNING
    tuner_copy.on_trial_complete("known", result={"score": 0.7, "training_iteration": 2})
    assert optuna.load_study(study_name="shared", storage=url).trials[trials["known"].number].value == 0.7


# --- a real search on the module's cluster, its worker killed by the pid its results carry ----

def results(trial_dir: Path) -> list[dict]:
    """A trial's results as Tune wrote them, one per reported epoch (and per replay)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # the last line may be half written while the search runs
    return rows


def trial_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "experiment").glob("train_trial_*") if p.is_dir())


@dataclass
class Kill:
    """What a fault injector did and saw, for the assertions and the report's figures."""

    trial_dir: Path | None = None
    pid: int | None = None
    epochs_before: int = 0  # epochs the trial had reported when it was hit
    reported_at: float = 0.0  # time.monotonic() when its last epoch before the kill was seen
    at: float = 0.0  # of the kill
    next_epoch_at: float = 0.0  # when the epoch after `epochs_before` was reported at last
    corrupted: list[Path] = field(default_factory=list)
    error: BaseException | None = None

    def lost_seconds(self) -> float:
        """Wall time the fault cost the trial: from its last report before the kill to the
        next new epoch's report, less that epoch's own training and validation time."""
        assert self.trial_dir is not None
        epoch = next(r for r in results(self.trial_dir) if r["epoch"] == self.epochs_before + 1)
        return self.next_epoch_at - self.reported_at - float(epoch["epoch_seconds"])


def kill_worker_after(out: Path, epochs: int, kill: Kill, corrupt: Callable[[Path], list[Path]] | None = None,
                      timeout: float = 240) -> threading.Thread:
    """Start a thread that SIGKILLs the worker of the first trial to report `epochs` epochs half
    an epoch after it has (mid-way through the next one), then `corrupt(trial_dir)` if given (the
    restarted worker takes seconds to start and load the checkpoint), then waits for the
    trial's next new epoch."""

    def run() -> None:
        try:
            def reported() -> Path | None:
                for trial in trial_dirs(out):
                    if len(results(trial)) >= epochs:
                        return trial
                return None

            trial = wait_for(reported, timeout, f"a trial to report {epochs} epochs")
            assert isinstance(trial, Path)
            kill.reported_at = time.monotonic()
            last = results(trial)[epochs - 1]
            pid = int(last["pid"])
            # Half an epoch on: the worker is surely inside the next one, and not done with it.
            time.sleep(0.5 * float(last["epoch_seconds"]))
            kill.at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            kill.trial_dir, kill.pid = trial, pid
            time.sleep(0.3)  # a result the worker sent just before dying is written by now
            kill.epochs_before = len(results(trial))
            if corrupt is not None:
                kill.corrupted = corrupt(trial)
            wait_for(lambda: any(r["epoch"] > kill.epochs_before for r in results(trial)), timeout,
                     "the trial's next epoch after the kill")
            kill.next_epoch_at = time.monotonic()
        except BaseException as exc:  # the test thread re-raises it
            kill.error = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def search(dataset, out: Path, **options) -> PipelineResult:
    """The smoke space's search in this process (on the module's cluster), no refit."""
    options.setdefault("cv", 1)
    return run_pipeline(PipelineOptions(search=SearchOptions(out=out, **options), space="smoke", refit=None),
                        dataset=dataset, log=lambda _: None)


@pytest.mark.slow  # 25-35 s of search, plus the cluster's start
def test_a_killed_trial_worker_resumes_from_its_last_checkpoint(ray_cluster, synthetic, tmp_path: Path) -> None:
    out = tmp_path / "run"
    kill = Kill()
    started = time.monotonic()
    thread = kill_worker_after(out, 2, kill)
    result = search(synthetic, out, num_samples=1, max_epochs=4, scheduler="fifo", max_concurrent=1)
    thread.join(timeout=30)
    assert kill.error is None, kill.error
    assert kill.trial_dir is not None
    rows = results(kill.trial_dir)
    print(f"\nworker {kill.pid} killed {kill.at - kill.reported_at:.2f} s after epoch {kill.epochs_before}: "
          f"epochs {[r['epoch'] for r in rows]}, pids {[r['pid'] for r in rows]}; lost {kill.lost_seconds():.1f} s; "
          f"search {time.monotonic() - started:.1f} s")
    # Each epoch reported once, none trained again, the last ones by a new worker.
    assert kill.epochs_before == 2
    assert [r["training_iteration"] for r in rows] == [1, 2, 3, 4]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["pid"] == kill.pid and rows[2]["pid"] != kill.pid
    assert rows[2]["iterations_since_restore"] == 1  # epoch 3 came from the restored checkpoint
    trials = result.run.trials()
    assert trials["status"].tolist() == ["completed"] and trials["epochs"].tolist() == [4]


def truncate_latest_checkpoint(trial_dir: Path) -> list[Path]:
    """Cut the state.pt of the trial's latest registered checkpoint (the one Tune restores) to
    half its size, as a disk filling up mid-write would."""
    latest = results(trial_dir)[-1]["checkpoint_dir_name"]
    state = trial_dir / latest / STATE_FILE
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    return [state]


@pytest.mark.slow  # 25-35 s of search each, plus the cluster's start
@pytest.mark.parametrize("keep", [1, 2])
def test_a_corrupt_checkpoint_costs_epochs_not_the_trial(ray_cluster, synthetic, tmp_path: Path, keep: int) -> None:
    # The worker is killed and the checkpoint Tune will restore truncated before the new worker
    # reads it. With one checkpoint kept the trial starts again; with two it steps back one.
    out = tmp_path / "run"
    kill = Kill()
    started = time.monotonic()
    thread = kill_worker_after(out, 2, kill, corrupt=truncate_latest_checkpoint)
    result = search(synthetic, out, num_samples=1, max_epochs=4, scheduler="fifo", max_concurrent=1,
                    keep_checkpoints=keep)
    thread.join(timeout=30)
    assert kill.error is None, kill.error
    assert kill.trial_dir is not None
    rows = results(kill.trial_dir)
    k = kill.epochs_before
    print(f"\nkeep {keep}: worker {kill.pid} killed after epoch {k}, {kill.corrupted[0].parent.name} truncated: "
          f"epochs {[r['epoch'] for r in rows]}; lost {kill.lost_seconds():.1f} s; "
          f"search {time.monotonic() - started:.1f} s")
    assert 2 <= k < 4
    again_from = 1 if keep == 1 else k  # keep 2: the checkpoint of epoch k - 1 is the fallback
    assert [r["epoch"] for r in rows] == [*range(1, k + 1), *range(again_from, 5)]
    assert all(r["training_iteration"] == r["epoch"] for r in rows)  # ASHA's clock stays the epoch
    warned = (kill.trial_dir / WARNINGS_FILE).read_text()
    assert f"{kill.corrupted[0].parent} is unreadable" in warned
    assert ("starts again from epoch 1" in warned) == (keep == 1)
    trials = result.run.trials()
    assert trials["status"].tolist() == ["completed"] and trials["epochs"].tolist() == [4]


# --- the driver killed: `--resume` in a new process -------------------------------------------

SEARCH = [sys.executable, str(ROOT / "scripts" / "search.py")]
SMOKE = ["--space", "smoke", "--data", "synthetic:200", "--no-refit", "--cv", "1", "--scheduler", "fifo",
         "--max-epochs", "4", "--max-concurrent", "1"]


def cli_env() -> dict[str, str]:
    # RAY_ADDRESS=local: the search starts a cluster of its own even when another one on this
    # machine was started last (ray.init() with no address would attach to that one).
    return {**os.environ, "RAY_ADDRESS": "local", "RAY_DEDUP_LOGS": "0"}


def start_search(args: list[str], log: Path) -> subprocess.Popen:
    """The CLI in a session of its own: every Ray process it starts shares the session id."""
    with log.open("w") as stream:
        return subprocess.Popen([*SEARCH, *args], stdout=stream, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env=cli_env())


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command of the live processes in session `sid` (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found[int(stat.parent.name)] = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def kill_driver(process: subprocess.Popen, grace: float = 10.0) -> dict[int, str]:
    """SIGKILL the search's driver, give Ray `grace` seconds to take its cluster down (its
    processes share the driver's fate), then SIGKILL what is left of that session, by pid.
    Returns what was left."""
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + grace
    while session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = session_processes(process.pid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_for(lambda: not session_processes(process.pid), 30, "the killed search's processes to end")
    return left


def all_results(out: Path) -> dict[str, list[dict]]:
    """Trial folder name -> its results."""
    return {trial.name: results(trial) for trial in trial_dirs(out)}


def searcher_study(out: Path) -> tuple[object, object]:
    """The Optuna study and sampler in the searcher state Tune saved last in the experiment."""
    newest = max((out / "experiment").glob("searcher-state-*.pkl"))
    study = saved_state(newest).study
    return study, study.sampler


@pytest.mark.slow  # about 2 minutes here, each
@pytest.mark.parametrize("study_in", ["memory", "sqlite"])
def test_a_killed_driver_resumes_the_search_and_the_study(tmp_path: Path, study_in: str) -> None:
    out = tmp_path / "run"
    args = [*SMOKE, "--num-samples", "10", "--out", str(out)]
    if study_in == "sqlite":
        args += ["--optuna-storage", f"sqlite:///{tmp_path / 'study.db'}"]
    started = time.monotonic()
    process = start_search(args, tmp_path / "first.log")

    # In memory the driver dies mid-trial (an epoch reported); with sqlite as a trial starts
    # (its folder made, nothing reported yet): Tune's last snapshot may predate its suggestion.
    def three_done_and_one_going() -> bool:
        counts = [len(rows) for rows in all_results(out).values()]
        going = (lambda c: 0 < c < 4) if study_in == "memory" else (lambda c: c == 0)
        return sum(c == 4 for c in counts) >= 3 and any(going(c) for c in counts)

    wait_for(three_done_and_one_going, 400, "three finished trials and one going", poll=0.02)
    killed_at = time.monotonic()
    before = all_results(out)
    left = kill_driver(process)
    first_run = killed_at - started
    resume_started = time.monotonic()
    resumed = subprocess.run([*SEARCH, *args, "--resume"], capture_output=True, text=True, timeout=900,
                             env=cli_env())
    resume_run = time.monotonic() - resume_started
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = all_results(out)
    trials = pd.read_csv(out / "trials.csv")
    known = {str(t) for t in trials["trial_id"]}

    finished = {name for name, rows in before.items() if len(rows) == 4}
    interrupted = {name for name, rows in before.items() if len(rows) < 4}
    orphans = {name for name in after if name.split("_")[2] not in known}  # Tune never saw them
    retrained = sum(len(rows) - len({r["epoch"] for r in rows}) for rows in after.values())
    lost_epochs = sum(len(after[name]) for name in orphans)
    [searched] = re.findall(r"search finished in (\d+) s", resumed.stdout)
    print(f"\nkilled the driver after {first_run:.0f} s: {len(finished)} trials finished, interrupted "
          f"{ {n.split('_')[2]: len(before[n]) for n in interrupted} }; Ray processes left behind "
          f"{sorted(cmd.split()[0] for cmd in left.values())}; resume {resume_run:.0f} s (its search "
          f"{searched} s, {sum(len(r) for r in after.values()) - sum(len(r) for r in before.values())} "
          f"epochs); epochs trained twice {retrained}; trial folders Tune forgot {len(orphans)} "
          f"({lost_epochs} epochs)")

    assert len(trials) == 10 and (trials["status"] == "completed").all() and (trials["epochs"] == 4).all()
    for name in finished:
        assert after[name] == before[name], f"{name}: a finished trial was trained again"
    for name, rows in after.items():
        epochs = [r["epoch"] for r in rows]
        assert epochs == sorted(set(epochs)), f"{name}: epochs {epochs} (one trained twice)"
        assert all(r["training_iteration"] == r["epoch"] for r in rows)
    for name in interrupted - orphans:  # continued from its checkpoint, to its last epoch
        assert [r["epoch"] for r in after[name]] == [1, 2, 3, 4]

    # The searcher Tune restored carries on the study of before the kill: the trials finished
    # then are in it, numbered before those proposed after the resume, and the sampler was past
    # its random start-up when the first of those was proposed (TPE, not a fresh sampler).
    study, sampler = searcher_study(out)
    by_tune_id = {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.trials
                  if TUNE_TRIAL_ID in t.user_attrs and LOST not in t.user_attrs}
    assert set(by_tune_id) == known
    lost = [t for t in study.trials if LOST in t.user_attrs]  # suggested after Tune's last save
    assert all(t.state == optuna.trial.TrialState.FAIL for t in lost)
    assert {t.user_attrs[TUNE_TRIAL_ID] for t in lost} <= {name.split("_")[2] for name in orphans}
    before_ids = {name.split("_")[2] for name in finished}
    after_ids = known - {name.split("_")[2] for name in before}
    assert after_ids, "no trial started after the resume"
    first_after = min(by_tune_id[i].number for i in after_ids)
    assert all(by_tune_id[i].number < first_after for i in before_ids)
    complete_then = [t for t in study.trials
                     if t.number < first_after and t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete_then) >= sampler._n_startup_trials >= 2
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    if study_in == "sqlite":  # what optuna-dashboard shows: the same trials, none left running
        stored = optuna.load_study(study_name=f"ecg-tune-{out.name}", storage=f"sqlite:///{tmp_path / 'study.db'}")
        print(f"sqlite study: {len(stored.trials)} trials, lost with the driver and told FAIL: "
              f"{[(t.number, t.user_attrs[TUNE_TRIAL_ID]) for t in lost]}")
        assert [(t.number, t.state) for t in stored.trials] == [(t.number, t.state) for t in study.trials]


@pytest.mark.slow  # about 2 minutes here
def test_a_resumed_time_budget_counts_only_the_remaining_time(tmp_path: Path) -> None:
    budget, kill_after = 60, 30
    out = tmp_path / "run"
    args = [*SMOKE, "--time-budget", str(budget), "--out", str(out)]
    process = start_search(args, tmp_path / "first.log")
    wait_for(lambda: (out / "experiment").is_dir(), 300, "the search to start")
    began = time.monotonic()  # Tune makes the experiment folder as its run begins
    time.sleep(kill_after)
    before = all_results(out)
    kill_driver(process)
    resumed = subprocess.run([*SEARCH, *args, "--resume"], capture_output=True, text=True, timeout=600,
                             env=cli_env())
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    [seconds] = re.findall(r"search finished in (\d+) s", resumed.stdout)
    after = all_results(out)
    print(f"\nbudget {budget} s, driver killed {kill_after} s into it ({sum(len(r) == 4 for r in before.values())} "
          f"trials finished); the resumed search ran {seconds} s "
          f"({time.monotonic() - began:.0f} s since the first start)")
    assert int(seconds) <= budget - kill_after + 15, "the resumed search was given more than the remaining time"
    for name, rows in before.items():
        if len(rows) == 4:
            assert after[name] == rows, f"{name}: a finished trial was trained again"
