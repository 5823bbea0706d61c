"""Early rungs that can tell trials apart: the validation AUROC (against scikit-learn over a grid of
cases), ASHA ranking its rungs by its own key (search/rungs.py), and the option from space file and
command line to the plan."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.search.adapt import DataFacts, adapt
from ecg_tune.search.plan import SearchOptions, make_plan
from ecg_tune.search.space_file import load_space
from ecg_tune.training.metrics import direction, macro_auroc

TINY = """\
model: {type: choice, values: [simple_cnn]}
transform: {type: choice, values: [none]}
augmentation: {type: choice, values: [none]}
lr: {type: float, low: 0.0001, high: 0.01, log: true}
"""


@pytest.mark.parametrize("classes", [2, 3, 5])
@pytest.mark.parametrize("records", [6, 40, 300])
@pytest.mark.parametrize("decimals", [1, 3, None])  # coarse rounding makes many ties
def test_macro_auroc_is_sklearns_one_vs_rest_mean(classes: int, records: int, decimals: int | None) -> None:
    rng = np.random.default_rng(classes * 1000 + records)
    for _ in range(5):
        labels = rng.integers(0, classes, records)
        scores = rng.dirichlet(np.ones(classes), records) + 0.3 * np.eye(classes)[labels]
        if decimals is not None:
            scores = np.round(scores, decimals)
        reference = [roc_auc_score(labels == c, scores[:, c]) for c in range(classes)
                     if 0 < (labels == c).sum() < records]
        assert macro_auroc(scores, labels) == pytest.approx(np.mean(reference), abs=1e-12)


def test_macro_auroc_edge_cases() -> None:
    labels = np.array([0, 0, 1, 1])
    assert macro_auroc(np.array([[.9, .1], [.8, .2], [.3, .7], [.1, .9]]), labels) == 1.0
    assert macro_auroc(np.full((4, 2), 0.5), labels) == 0.5  # a constant predictor: every pair tied
    # a class with no record is left out, not scored as 0 or 1
    three = np.array([[.6, .3, .1], [.5, .4, .1], [.2, .7, .1], [.3, .6, .1]])
    assert macro_auroc(three, labels) == 1.0
    assert np.isnan(macro_auroc(np.array([[.5, .5], [.4, .6]]), np.array([1, 1])))  # one class only
    assert direction("val_auroc") == "max"


def _asha(metric: str, mode: str):
    from ecg_tune.search.rungs import RungASHA

    asha = RungASHA(metric=metric, mode=mode, time_attr="training_iteration", max_t=8, grace_period=1,
                    reduction_factor=2)
    # Tune hands every scheduler the search's metric: this one keeps its own.
    assert asha.set_search_properties("val_cinc_f1", "max")
    return asha


def _rung_decisions(metric: str, mode: str) -> list[str]:
    """Two majority-class trials at the first rung: equal-ish F1, different AUROC."""
    from ray.tune.schedulers import TrialScheduler

    asha = _asha(metric, mode)
    first, second = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    decisions = []
    for trial, f1, auroc, loss in ((first, 0.248, 0.81, 0.95), (second, 0.251, 0.62, 0.93)):
        asha.on_trial_add(None, trial)
        result = {"training_iteration": 1, "val_cinc_f1": f1, "val_auroc": auroc, "val_loss": loss}
        action = asha.on_trial_result(None, trial, result)
        decisions.append("stop" if action == TrialScheduler.STOP else "continue")
    return decisions


def test_rungs_rank_by_their_own_key_not_the_search_metric() -> None:
    # ranked by the metric, the second trial's 0.251 beats the first's 0.248 and it goes on;
    # ranked by the AUROC, its 0.62 is below the first's 0.81 and it stops.
    assert _rung_decisions("val_cinc_f1", "max") == ["continue", "continue"]
    assert _rung_decisions("val_auroc", "max") == ["continue", "stop"]
    assert _rung_decisions("val_loss", "min") == ["continue", "continue"]  # a lower loss is better


@pytest.fixture(scope="module")
def facts() -> DataFacts:
    return DataFacts.from_dataset(prepare("synthetic:40", progress=False))


def test_the_plan_takes_the_rung_metric_from_options_then_space(tmp_path: Path, facts: DataFacts) -> None:
    from ecg_tune.search.tuner import _scheduler

    plain = make_plan(SearchOptions(out=tmp_path), adapt(load_space("smoke"), facts), 2, 0)
    assert plain.rung_metric == plain.metric and "rungs ranked by" not in plain.describe()
    assert _scheduler(plain).metric == plain.metric

    declared = tmp_path / "s.yaml"
    declared.write_text(TINY + "search: {rung_metric: val_auroc}\n")
    plan = make_plan(SearchOptions(out=tmp_path), adapt(load_space(str(declared)), facts), 2, 0)
    assert plan.rung_metric == "val_auroc" and plan.metric == "val_cinc_f1"
    assert "rungs ranked by val_auroc" in plan.describe()
    assert _scheduler(plan).metric == "val_auroc"
    overridden = make_plan(SearchOptions(out=tmp_path, rung_metric="val_loss"),
                           adapt(load_space(str(declared)), facts), 2, 0)
    assert overridden.rung_metric == "val_loss" and _scheduler(overridden)._metric_op == -1.0

    with pytest.raises(ConfigError, match="rung_metric val_nonsense: not reported; choose one of"):
        make_plan(SearchOptions(out=tmp_path, rung_metric="val_nonsense"), adapt(load_space("smoke"), facts), 2, 0)


def test_a_bad_rung_metric_is_a_one_line_error(tmp_path: Path) -> None:
    from conftest import search_cli

    result = search_cli("--dry-run", "--space", "smoke", "--data", "synthetic:40", "--rung-metric", "val_f1_Q",
                        timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "rung_metric val_f1_Q: not reported" in result.stderr
    good = search_cli("--dry-run", "--space", "smoke", "--data", "synthetic:40", "--rung-metric", "val_auroc",
                      timeout=120)
    assert good.returncode == 0 and "rungs ranked by val_auroc" in good.stdout, good.stderr[-1000:]
