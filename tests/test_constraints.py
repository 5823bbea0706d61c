"""Cost limits and several objectives (issue 26) on a small real local Ray cluster: configurations
above a parameter or MAC limit are never trained (rejected by the Optuna searcher, skipped by the
grid), a latency-infeasible trial is never the best (nor an ensemble member), a multi-objective
search runs to its end, and `--dry-run` says how much of a space is feasible."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ecg_tune.cli import main
from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError, EcgTuneError
from ecg_tune.pipeline import PipelineOptions, run_pipeline
from ecg_tune.runs import TrialRecord, TrialTable
from ecg_tune.search.adapt import DataFacts, adapt
from ecg_tune.search.ensemble import rank_trials
from ecg_tune.search.export import pick_best
from ecg_tune.search.optuna_search import INFEASIBLE, saved_state
from ecg_tune.search.plan import SearchOptions, make_plan
from ecg_tune.search.space_file import load_space
from ecg_tune.training.costs import config_costs

# simple_cnn on 600 samples and 4 classes: feature_size 4 -> 20,600 parameters, 8 -> 39,564,
# 64 -> 305,060, 256 -> 1,215,332 (training/costs.config_costs).
FEATURES = """
model: simple_cnn
input_length: 600
batch_size: 16
feature_size: {type: choice, values: [4, 8, 64, 256]}
lr: {type: float, low: 0.0001, high: 0.01, log: true}
start:
  - {feature_size: 256, lr: 0.001}
  - {feature_size: 8}
"""
MAX_PARAMS = 40_000
# resnet1d of depth 2 on 600 samples: width 4 -> 37,832 MACs a record, 8 -> 147,664, 16 -> 554,528.
WIDTHS = """
model: resnet1d
input_length: 600
batch_size: 16
depth: 2
width: {type: choice, values: [4, 8, 16]}
search: {searcher: grid, max_epochs: 1}
"""
MAX_MACS = 200_000
FACTS = DataFacts(n_records=80, min_length=2000, median_length=9000, max_length=18000, classes=["A", "N", "O", "~"])


@pytest.fixture(scope="module")
def small():
    return prepare("synthetic:80", progress=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def search(dataset, space: Path, out: Path, **options):
    options.setdefault("cv", 1)
    result = run_pipeline(PipelineOptions(search=SearchOptions(out=out, **options), space=space, refit=None),
                          dataset=dataset)
    return result, pd.read_csv(out / "trials.csv")


def searcher_state(out: Path):
    return saved_state(max((out / "experiment").glob("searcher-state-*.pkl")))


def test_the_estimates_these_tests_rely_on() -> None:
    counts = {size: config_costs(make_config({"model": "simple_cnn", "feature_size": size}), 600, 4).n_params
              for size in (4, 8, 64)}
    assert counts[4] < counts[8] < MAX_PARAMS < counts[64]
    macs = {width: config_costs(make_config({"model": "resnet1d", "depth": 2, "width": width}), 600, 4).macs
            for width in (4, 8, 16)}
    assert macs[4] < macs[8] < MAX_MACS < macs[16]


def test_no_configuration_above_a_parameter_limit_is_trained(ray_cluster, small, tmp_path: Path) -> None:
    space = write(tmp_path / "features.yaml", FEATURES + "search: {max_epochs: 1}\n")
    result, trials = search(small, space, tmp_path / "out", num_samples=4, max_params=MAX_PARAMS, max_concurrent=2)
    assert result.plan.feasibility is not None and 0 < result.plan.feasibility.feasible < 200
    assert len(trials) == 4 and set(trials["config/feature_size"]) <= {4, 8}
    assert (trials["final/n_params"] <= MAX_PARAMS).all() and (trials["final/feasible"] == 1.0).all()
    assert (trials["final/macs"] > 0).all() and (trials["final/latency_ms"] > 0).all()
    # Optuna was told of the rejected ones (the 256 start point first), none reached Tune.
    study = searcher_state(tmp_path / "out").study
    rejected = [t for t in study.trials if INFEASIBLE in t.user_attrs]
    assert rejected and all(t.params["feature_size"] in (64, 256) for t in rejected)
    assert all(t.constraints["n_params"] > 0 for t in rejected)
    assert rejected[0].number == 0 and rejected[0].params["feature_size"] == 256  # the start point, skipped
    assert len(study.trials) == len(rejected) + 4
    assert result.best.metrics["n_params"] <= MAX_PARAMS and result.best.metrics["feasible"] == 1.0


def test_a_grid_skips_configurations_above_a_mac_limit(ray_cluster, small, tmp_path: Path) -> None:
    space = write(tmp_path / "widths.yaml", WIDTHS)
    result, trials = search(small, space, tmp_path / "out", max_macs=MAX_MACS)
    assert result.plan.feasibility.describe() == f"feasible: 2 of 3 grid configurations (MACs <= {MAX_MACS})"
    assert len(trials) == 2 and sorted(trials["config/width"]) == [4, 8]
    assert (trials["final/macs"] <= MAX_MACS).all()


def test_a_trial_above_the_latency_limit_is_never_the_best(ray_cluster, small, tmp_path: Path) -> None:
    space = write(tmp_path / "widths.yaml", WIDTHS)
    with pytest.raises(EcgTuneError, match="no feasible trial"):
        search(small, space, tmp_path / "out", max_latency_ms=1e-6)
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(trials) == 3 and (trials["final/feasible"] == 0.0).all() and (trials["final/latency_ms"] > 0).all()


def record(trial_id: str, score: float, feasible: float | None) -> TrialRecord:
    final = {"latency_ms": 2.0} | ({} if feasible is None else {"feasible": feasible})
    return TrialRecord(trial_id=trial_id, status="completed", epochs=2, config={}, final=final,
                       best={"val_macro_f1": score}, best_epoch=1, peak_metrics={"val_macro_f1": score})


def test_the_best_trial_and_an_ensemble_are_chosen_among_feasible_trials(tmp_path: Path) -> None:
    records = [record("fast", 0.7, 1.0), record("slow", 0.9, 0.0), record("older", 0.8, None)]
    assert pick_best(records, "val_macro_f1", tmp_path).trial_id == "older"  # a run from before the limits
    assert pick_best(records[:2], "val_macro_f1", tmp_path).trial_id == "fast"
    with pytest.raises(EcgTuneError, match=r"no feasible trial: all 1 broke a cost limit"):
        pick_best(records[1:2], "val_macro_f1", tmp_path)
    table = TrialTable.from_frame(pd.DataFrame([r.flat() for r in records]))
    assert rank_trials(table, "val_macro_f1") == ["older", "fast"]


def test_a_multi_objective_search_runs_and_reports_both_objectives(ray_cluster, small, tmp_path: Path) -> None:
    space = write(tmp_path / "features.yaml",
                  FEATURES.split("start:")[0] + "search: {max_epochs: 2, grace_period: 1, reduction_factor: 2}\n")
    result, trials = search(small, space, tmp_path / "out", num_samples=4, max_concurrent=2, cv=2,
                            objectives="val_cinc_f1,latency_ms")
    plan = result.plan
    assert plan.objectives == ("val_cinc_f1", "latency_ms") and plan.metric == "val_cinc_f1"
    assert "a multi-objective study" in plan.describe()
    assert len(trials) == 4 and trials["best/val_cinc_f1"].notna().all() and (trials["final/latency_ms"] > 0).all()
    # Under cross-validation the costs come out once, not per fold nor as a spread.
    assert "final/latency_ms_std" not in trials and "final/n_params_std" not in trials
    study = searcher_state(tmp_path / "out").study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    # ASHA on the first objective: the trials it stopped are PRUNED (no values), the others COMPLETE.
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert complete and len(complete) + len(pruned) == 4 and all(len(t.values) == 2 for t in complete)
    assert len(pruned) == (trials["status"] == "stopped").sum() and all(t.values is None for t in pruned)
    by_id = trials.set_index("trial_id")
    for t in complete:
        row = by_id.loc[t.user_attrs["tune_trial_id"]]
        assert t.values == pytest.approx([row["best/val_cinc_f1"], row["final/latency_ms"]])
    assert result.best.score == pytest.approx(trials["best/val_cinc_f1"].max())


def test_objectives_are_checked_against_the_reported_keys() -> None:
    space = adapt(load_space("smoke"), FACTS)

    def plan(**options):
        return make_plan(SearchOptions(out=Path("."), **options), space, 2, 0)

    with pytest.raises(ConfigError, match="--objectives val_speed: not a reported key"):
        plan(objectives="val_cinc_f1,val_speed")
    with pytest.raises(ConfigError, match="--objectives n_params: the first objective must be a validation metric"):
        plan(objectives="n_params,val_cinc_f1")
    with pytest.raises(ConfigError, match="--metric val_loss: a multi-objective search"):
        plan(objectives="val_cinc_f1,latency_ms", metric="val_loss")
    with pytest.raises(ConfigError, match="named twice"):
        plan(objectives="val_cinc_f1,macs,macs")
    multi = plan(objectives=["val_loss", "n_params", "val_auroc"])
    assert multi.metric == "val_loss" and multi.directions == ["min", "min", "max"]
    assert multi.rung_metric == "val_loss" and "ASHA's rungs rank by the first objective only" in multi.describe()
    assert plan(objectives="val_auroc").objectives == ()  # one objective: a plain search by it


def test_dry_run_says_how_much_of_the_space_is_feasible(tmp_path: Path, capsys) -> None:
    space = write(tmp_path / "features.yaml", FEATURES)
    assert main(["search", "--dry-run", "--space", str(space), "--data", "synthetic:60",
                 "--max-params", str(MAX_PARAMS)]) == 0
    out = capsys.readouterr().out
    line = next(part for part in out.split("; ") if part.startswith("feasible: "))
    feasible = int(line.split()[1])
    assert 0 < feasible < 200 and line.endswith(f"of 200 sampled configurations (params <= {MAX_PARAMS})")
    assert f"; start point 1: params 1215332 > {MAX_PARAMS} (skipped)" in out and "start point 2:" not in out
    with pytest.raises(ConfigError, match="--max-params 100: none of the 200 sampled configurations"):
        make_plan(SearchOptions(out=Path("."), max_params=100), adapt(load_space(str(space)), FACTS), 2, 0)
    # The same limits from the space file's search: section.
    limited = write(tmp_path / "limited.yaml", FEATURES + f"search: {{max_params: {MAX_PARAMS}, max_latency_ms: 3}}\n")
    plan = make_plan(SearchOptions(out=Path(".")), adapt(load_space(str(limited)), FACTS), 2, 0)
    assert plan.limits.max_params == MAX_PARAMS and plan.limits.max_latency_ms == 3
    assert "cannot be the best" in plan.describe()


def test_the_searcher_tells_optuna_what_a_trial_measured_against_the_limits(tmp_path: Path) -> None:
    from ecg_tune.search.optuna_search import PruningAwareOptunaSearch
    from ecg_tune.search.samplers import CostCheck, define_by_run
    from ecg_tune.training.costs import CostLimits

    space = adapt(load_space(str(write(tmp_path / "features.yaml", FEATURES))), FACTS)
    limits = CostLimits(max_params=MAX_PARAMS, max_latency_ms=2.0)
    searcher = PruningAwareOptunaSearch(space=define_by_run(space), metric="val_cinc_f1", mode="max", seed=0,
                                        max_epochs=1, points_to_evaluate=[dict(p) for p in space.start],
                                        objectives=["val_cinc_f1", "latency_ms"], modes=["max", "min"],
                                        cost_check=CostCheck(space, limits))
    for number, latency in enumerate((1.0, 3.0)):
        config = searcher.suggest(f"t{number}")
        assert config is not None and config["feature_size"] in (4, 8)  # the 256 start point was skipped
        result = {"val_cinc_f1": 0.5, "latency_ms": latency, "n_params": 30000.0, "training_iteration": 1,
                  "finished": True}
        searcher.on_trial_result(f"t{number}", result)
        searcher.on_trial_complete(f"t{number}", result)
    ran = [t for t in searcher.study.trials if "tune_trial_id" in t.user_attrs]
    assert [t.values for t in ran] == [[0.5, 1.0], [0.5, 3.0]]
    assert ran[0].constraints["latency_ms"] == pytest.approx(-0.5) and ran[1].constraints["latency_ms"] == 0.5
    assert all(t.constraints["n_params"] == pytest.approx(30000 / MAX_PARAMS - 1) for t in ran)
    assert searcher.study.trials[0].user_attrs[INFEASIBLE].startswith("params 1215332 > 40000")
