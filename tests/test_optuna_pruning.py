"""ASHA-stopped trials reach Optuna as PRUNED (search/optuna_search.py).

The searcher is driven directly as Tune drives it (suggest, on_trial_result for each epoch the
scheduler lets continue, on_trial_complete with the last result), then through a real search on
a small local Ray cluster whose Optuna study is kept in sqlite, and saved and restored.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pandas as pd
import pytest

from ecg_tune.search.optuna_search import TUNE_TRIAL_ID, PruningAwareOptunaSearch

State = optuna.trial.TrialState


def learning_rate_space(trial: optuna.trial.Trial) -> None:
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)


def searcher(mode: str, storage: str | None = None, pruned_as_complete: bool = False) -> PruningAwareOptunaSearch:
    extra = {"storage": optuna.storages.RDBStorage(storage), "study_name": "unit"} if storage else {}
    return PruningAwareOptunaSearch(space=learning_rate_space, metric="score", mode=mode, max_epochs=4,
                                    sampler=optuna.samplers.TPESampler(seed=0),
                                    pruned_as_complete=pruned_as_complete, **extra)


def epoch(step: int, score: float) -> dict:
    return {"score": score, "training_iteration": step, "trial_id": "ignored"}


def run_trial(s: PruningAwareOptunaSearch, trial_id: str, scores: list[float], *, finish: bool = True) -> None:
    """Like Tune with ASHA: every epoch but the last through on_trial_result; the last result,
    the one the scheduler answers STOP to, only through on_trial_complete."""
    assert s.suggest(trial_id) is not None
    for step, score in enumerate(scores[:-1], 1):
        s.on_trial_result(trial_id, epoch(step, score))
    if finish:
        s.on_trial_complete(trial_id, result=epoch(len(scores), scores[-1]))


def by_tune_id(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs[TUNE_TRIAL_ID]: t for t in study.get_trials(deepcopy=False)}


@pytest.mark.parametrize("mode", ["max", "min"])
def test_stopped_trials_are_pruned_and_finished_ones_complete_with_their_best(mode: str) -> None:
    s = searcher(mode)
    run_trial(s, "stopped", [0.3, 0.35])
    run_trial(s, "finished", [0.2, 0.6, 0.5, 0.4])
    run_trial(s, "errored", [0.5], finish=False)
    s.on_trial_complete("errored", error=True)  # how TuneController reports an error: no result
    assert s.suggest("never_ran") is not None
    s.on_trial_complete("never_ran")  # a pending trial removed: no result
    trials = by_tune_id(s.study)

    stopped = trials["stopped"]
    assert stopped.state == State.PRUNED
    assert stopped.intermediate_values == {1: 0.3, 2: 0.35}  # the stopping epoch included
    assert stopped.value == 0.35  # Optuna keeps a pruned trial's last intermediate value
    finished = trials["finished"]
    assert finished.state == State.COMPLETE
    assert finished.intermediate_values == {1: 0.2, 2: 0.6, 3: 0.5, 4: 0.4}
    assert finished.value == (0.6 if mode == "max" else 0.2)  # its best epoch, as export.py ranks
    assert trials["errored"].state == State.FAIL and trials["errored"].value is None
    assert trials["never_ran"].state == State.PRUNED and trials["never_ran"].intermediate_values == {}
    assert s.study.direction.name == ("MAXIMIZE" if mode == "max" else "MINIMIZE")
    # A later suggestion still works with pruned trials in the study.
    assert "lr" in s.suggest("next")


def test_ray_behaviour_for_the_benchmark_stopped_trials_complete_with_their_last_value() -> None:
    """`benchmark search`'s optuna_asha_complete: a stopped trial is told COMPLETE with the value
    of the epoch it stopped at, as Ray 2.60's OptunaSearch tells it; the rest is unchanged."""
    s = searcher("max", pruned_as_complete=True)
    run_trial(s, "stopped", [0.5, 0.35])
    run_trial(s, "finished", [0.2, 0.6, 0.5, 0.4])
    trials = by_tune_id(s.study)
    assert trials["stopped"].state == State.COMPLETE and trials["stopped"].value == 0.35
    assert trials["finished"].state == State.COMPLETE and trials["finished"].value == 0.6


def test_a_trial_that_ends_itself_early_is_complete_not_pruned() -> None:
    """Early stopping and minirocket's one closed-form fit end a trial before max_epochs by
    itself; the loop marks that last epoch `finished`, and Optuna is told COMPLETE."""
    s = searcher("max")
    s.suggest("early")
    s.on_trial_result("early", epoch(1, 0.4))
    s.on_trial_complete("early", result={**epoch(2, 0.7), "finished": True})
    trial = by_tune_id(s.study)["early"]
    assert trial.state == State.COMPLETE and trial.value == 0.7


def test_the_loop_marks_the_epoch_a_run_ends_on() -> None:
    from ecg_tune.config import make_config
    from ecg_tune.data import prepare
    from ecg_tune.training.loop import fit

    data = prepare("synthetic:40", progress=False)
    args = (data.tensors, data.index("train"), data.index("val"))
    plain = [r.metrics["finished"] for r in fit(make_config({"epochs": 3, "input_length": 300}), *args)]
    assert plain == [False, False, True]
    # Early stopping with patience 1 ends at the first epoch whose val_loss does not improve.
    early = [r.metrics for r in fit(make_config({"epochs": 30, "input_length": 300, "lr": 0.05,
                                                  "early_stop_patience": 1}), *args)]
    assert [m["finished"] for m in early] == [False] * (len(early) - 1) + [True]
    assert len(early) < 30


def test_a_proposal_that_repeats_a_finished_trial_is_answered_from_memory() -> None:
    def two_models(trial: optuna.trial.Trial) -> None:
        trial.suggest_categorical("model", ["a", "b"])

    s = PruningAwareOptunaSearch(space=two_models, metric="score", mode="max", max_epochs=2,
                                 sampler=optuna.samplers.RandomSampler(seed=3))
    first = s.suggest("t1")
    s.on_trial_result("t1", epoch(1, 0.5))
    s.on_trial_complete("t1", result=epoch(2, 0.8))
    second = s.suggest("t2")
    assert second is not None and second["model"] != first["model"]  # the repeat never reaches Tune
    trials = s.study.get_trials(deepcopy=False)
    repeats = [t for t in trials if t.user_attrs.get("repeat_of") == "t1"]
    assert repeats, "seed 3 proposes the finished model again before the other one"
    assert all(t.state == State.COMPLETE and t.value == 0.8 and t.params == first for t in repeats)
    # A space with nothing new left still runs: after MAX_REPEATS answers the repeat is let through.
    s.on_trial_result("t2", epoch(1, 0.1))
    s.on_trial_complete("t2", result=epoch(2, 0.2))
    assert s.suggest("t3") is not None


def test_a_repeated_epoch_keeps_its_first_value_and_late_results_are_ignored() -> None:
    s = searcher("max")
    s.suggest("t")
    s.on_trial_result("t", epoch(1, 0.5))
    s.on_trial_result("t", epoch(1, 0.9))  # restarted from a checkpoint: epoch 1 again
    s.on_trial_complete("t", result=epoch(2, 0.6))
    s.on_trial_result("t", epoch(3, 0.7))
    s.on_trial_complete("t", result=epoch(3, 0.7))
    trial = by_tune_id(s.study)["t"]
    assert trial.state == State.PRUNED and trial.intermediate_values == {1: 0.5, 2: 0.6}


def test_a_finished_trial_without_a_finite_score_fails() -> None:
    s = searcher("max")
    run_trial(s, "nan", [float("nan")] * 4)
    assert by_tune_id(s.study)["nan"].state == State.FAIL  # not left RUNNING by a rejected tell


def start_space(trial: optuna.trial.Trial) -> dict:
    """Like DefineByRun: a conditional parameter, clamped in the returned constants."""
    model = trial.suggest_categorical("model", ["a", "b"])
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    if model == "b":
        return {"levels": min(trial.suggest_int("levels", 1, 5), 4), "batch_size": 16}
    return {"batch_size": 16}


def test_start_points_run_first_as_given_and_the_keys_they_leave_out_are_sampled() -> None:
    points = [{"model": "b", "levels": 3.0, "lr": 0.002}, {"model": "b", "levels": 5, "lr": 0.005}, {"lr": 0.004}]
    s = PruningAwareOptunaSearch(space=start_space, metric="score", mode="max", max_epochs=2,
                                 sampler=optuna.samplers.TPESampler(seed=0), points_to_evaluate=points)
    first, second, third, fourth = (s.suggest(f"t{n}") for n in range(4))
    # The config holds what the suggest calls returned (an int for levels 3.0), constants over them.
    assert first == {"model": "b", "lr": 0.002, "levels": 3, "batch_size": 16} and type(first["levels"]) is int
    assert second == {"model": "b", "lr": 0.005, "levels": 4, "batch_size": 16}
    assert third["lr"] == 0.004 and third["model"] in ("a", "b")  # model: sampled
    assert fourth["lr"] not in (0.002, 0.005, 0.004)
    trials = by_tune_id(s.study)
    assert [trials[f"t{n}"].number for n in range(4)] == [0, 1, 2, 3]
    assert trials["t1"].params["levels"] == 5  # Optuna records what was suggested; the trial runs 4


def test_a_trial_the_searcher_never_suggested_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    """A trial Tune's experiment state knows but the searcher's older save does not (the driver
    stopped between the two writes): a warning, not a failed search."""
    s = searcher("max")
    s.on_trial_result("unknown", epoch(1, 0.5))
    s.on_trial_complete("unknown", result=epoch(2, 0.6))
    assert "never suggested" in caplog.text and s.study.trials == []


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_save_and_restore_keep_the_study_and_trials_in_flight(storage: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/unit.db" if storage == "sqlite" else None
    s = searcher("max", url)
    run_trial(s, "stopped", [0.3, 0.35])
    run_trial(s, "running", [0.1, 0.2, 0.3], finish=False)  # reported epochs 1 and 2 so far
    # Tune pickles the searcher object with the Tuner (tuner.pkl) and saves its state with
    # Searcher.save_to_dir at every experiment checkpoint; a resume restores both.
    restored = pickle.loads(pickle.dumps(s))
    folder = tmp_path / "experiment"
    folder.mkdir()
    s.save_to_dir(str(folder), session_str="now")
    restored.restore_from_dir(str(folder))
    assert isinstance(restored, PruningAwareOptunaSearch) and restored.max_epochs == 4

    restored.on_trial_result("running", epoch(2, 0.99))  # repeated after the restart: ignored
    restored.on_trial_result("running", epoch(3, 0.3))
    restored.on_trial_complete("running", result=epoch(4, 0.25))
    run_trial(restored, "after", [0.5])
    study = restored.study
    if url:  # what optuna-dashboard and the pipeline's caller see
        study = optuna.load_study(study_name="unit", storage=url)
    trials = by_tune_id(study)
    assert trials["stopped"].state == State.PRUNED and trials["stopped"].intermediate_values == {1: 0.3, 2: 0.35}
    assert trials["running"].state == State.COMPLETE and trials["running"].value == 0.3
    assert trials["running"].intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.25}
    assert trials["after"].state == State.PRUNED and len(trials) == 3


# ----------------------------------------------------------------------------------------------
# A real search


TINY = """
model: simple_cnn
input_length: 600
batch_size: 16
transform: {type: choice, values: [none, wavelet]}
wavelet: {type: choice, values: [db2, haar], when: {transform: wavelet}}
levels: {type: int, low: 2, high: 4, when: {transform: wavelet}}
lr: {type: float, low: 0.0001, high: 0.01, log: true}
search: {max_epochs: 4, grace_period: 1, reduction_factor: 2}
"""


def test_asha_stopped_trials_are_pruned_in_the_study(ray_cluster, tmp_path: Path) -> None:
    from ecg_tune.data import prepare
    from ecg_tune.pipeline import PipelineOptions, run_pipeline
    from ecg_tune.search.plan import SearchOptions

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY)
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path}/study.db"
    options = SearchOptions(out=out, num_samples=8, cpus_per_trial=1, max_concurrent=2, optuna_storage=storage,
                            cv=1)
    result = run_pipeline(PipelineOptions(search=options, space=space, refit=None),
                          dataset=prepare("synthetic:80", progress=False))
    metric = result.plan.metric
    rows = pd.read_csv(out / "trials.csv").set_index("trial_id")
    histories = result.run.histories()
    study = optuna.load_study(study_name=f"ecg-tune-{out.name}", storage=storage)
    trials = by_tune_id(study)

    assert set(trials) == set(rows.index) and len(rows) == 8
    assert set(rows["status"]) == {"completed", "stopped"}, rows["status"].tolist()  # ASHA stopped some
    for trial_id, row in rows.iterrows():
        trial, history = trials[trial_id], histories[trial_id]
        per_epoch = dict(zip(history["training_iteration"].astype(int), history[metric].astype(float), strict=True))
        assert trial.intermediate_values == pytest.approx(per_epoch), trial_id
        assert len(per_epoch) == row["epochs"]
        if row["status"] == "stopped":
            assert trial.state == State.PRUNED and row["epochs"] < 4
            assert trial.value == pytest.approx(per_epoch[row["epochs"]])
        else:
            assert trial.state == State.COMPLETE and row["epochs"] == 4
            assert trial.value == pytest.approx(row[f"best/{metric}"])
