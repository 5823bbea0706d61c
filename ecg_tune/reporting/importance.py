"""Parameter importances of a search: fANOVA on Optuna studies rebuilt from its trials.

Owns `parameter_importances` (what the page's importance bars show and the end of a search
prints the top three of) and `Importances`, the shares with the trials each was assessed on, or
why there are none. The parameters and scores come from analysis.py.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecg_tune.reporting.analysis import Parameter, search_parameters, trial_scores
from ecg_tune.runs import TrialTable
from ecg_tune.search.parameters import Parameter as DeclaredParameter
from ecg_tune.search.samplers import quiet_optuna
from ecg_tune.training.metrics import direction

# Below three trials a forest has nothing to split on; the page says so instead of showing numbers.
MIN_TRIALS = 3


@dataclass
class Importances:
    """Parameter importances of a search (shares of the score's variance), or why there are none."""

    values: dict[str, float] = field(default_factory=dict)  # most important first
    basis: dict[str, int] = field(default_factory=dict)  # per parameter: the trials it was assessed on
    unassessed: dict[str, int] = field(default_factory=dict)  # set in too few trials: how many
    trials: int = 0  # trials with a score
    note: str | None = None  # why there are none

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        return list(self.values.items())[:n]

    @property
    def method(self) -> str:
        """How they were computed, in words for the page."""
        return (f"fANOVA (Optuna's FanovaImportanceEvaluator: a random forest fitted to the trials' "
                f"scores, seed 0) on a study rebuilt from the {self.trials} trials that reported a score: "
                f"each bar is the share of the score's variance that the parameter explains on its own. "
                f"A parameter set in every trial is assessed on all {self.trials}. A conditional parameter "
                f"(set only in some configurations, e.g. a wavelet's levels) is assessed on the trials "
                f"where it is set, and its share is scaled by those trials' part of the total variance "
                f"(their number times their variance, over all trials'), so that all bars read on one "
                f"scale; each forest also sees the other parameters, filled in at random where a trial "
                f"does not use them. The shares need not add up to 1: the rest is parameters acting "
                f"together, and noise.")


def parameter_importances(table: TrialTable, metric: str,
                          declared: Mapping[str, DeclaredParameter] | None = None) -> Importances:
    """fANOVA importances of the parameters that varied, over the trials that reported `metric`.

    The Tune trials become Optuna studies: one complete trial per scored Tune trial, its value the
    trial's best `metric`, with distributions spanning the values seen. fANOVA assesses only
    parameters set in every trial it is given, so the parameters are grouped by the trials they
    are set in: those set everywhere are assessed on all trials; each conditional group (e.g.
    the SVM's options, set where the model is cnn_svm) on its own trials, and scaled by that
    subset's share of the total variance (the law of total variance: n_s var_s / n var is the
    within-subset part). Each fit also takes every other parameter that varies in its trials,
    filled in at random where absent (`_filled`): without them, the forest fitted to all
    trials explains the conditional parameters' effects with whatever else varies (a noise
    parameter got 0.4 to 0.75 in a test where one conditional parameter drove the score).

    Why not PED-ANOVA, Optuna's default, which handles conditional parameters itself: measured on
    a 759-trial ECG200 search, it ranked fine-grained numeric parameters far above categorical
    ones and gave `model` 0.00, where this gives it 0.66 of the score's variance, the most by far.

    `declared`: the run's space (`analysis.declared_parameters`), for the parameters' kinds.
    """
    scores = trial_scores(table, metric)
    scored = table.config[scores.notna().to_numpy()]
    values = scores[scores.notna()].to_numpy(float)
    n = len(values)
    if n < MIN_TRIALS:
        return Importances(trials=n, note=f"importances need at least {MIN_TRIALS} trials that reported "
                                          f"{metric}; this search has {n}")
    parameters, _ = search_parameters(scored, declared)
    if not parameters:
        return Importances(trials=n, note=f"no parameter took more than one value over the {n} scored trials")
    total = float(np.var(values))
    if not total > 0:
        return Importances(trials=n, note=f"all {n} scored trials have the same {metric}")

    groups: dict[tuple[bool, ...], list[Parameter]] = {}
    for parameter in parameters:
        groups.setdefault(tuple(v is not None for v in parameter.values), []).append(parameter)
    result = Importances(trials=n)
    shares: dict[str, float] = {}
    for mask, members in groups.items():
        rows = [i for i, defined in enumerate(mask) if defined]
        if len(rows) < MIN_TRIALS:
            result.unassessed.update({p.name: len(rows) for p in members})
            continue
        subset = values[rows]
        weight = len(rows) / n * float(np.var(subset)) / total
        found = _fanova(parameters, rows, subset, metric) if weight > 0 else {}
        for parameter in members:
            shares[parameter.name] = weight * found.get(parameter.name, 0.0)
            result.basis[parameter.name] = len(rows)
    result.values = dict(sorted(shares.items(), key=lambda kv: -kv[1]))
    if not result.values:
        result.note = (f"every parameter that varied was set in fewer than {MIN_TRIALS} of the "
                       f"{n} scored trials")
    return result


def _fanova(parameters: list[Parameter], rows: list[int], scores: np.ndarray, metric: str) -> dict[str, float]:
    """Raw fANOVA main-effect shares of the parameters that vary over the trials `rows` (scores
    aligned), absent values filled in at random."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        with quiet_optuna(), warnings.catch_warnings():
            # normalize=False is marked experimental; the raw shares are what the scaling needs.
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="minimize" if direction(metric) == "min" else "maximize")
            # Only parameters that vary in these trials: a forest learns nothing from a constant.
            varying = [(p, values) for p in parameters if len(set(values := _filled(p, rows))) > 1]
            distributions = {p.name: _distribution(p) for p, _ in varying}
            for k, score in enumerate(scores):
                study.add_trial(optuna.trial.create_trial(
                    params={p.name: values[k] for p, values in varying}, distributions=distributions,
                    value=float(score)))
            found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                          params=list(distributions), normalize=False)
    except RuntimeError:  # "zero total variance in all trees": nothing to attribute
        return {}
    return {k: max(0.0, float(v)) for k, v in found.items()}


def _distribution(parameter: Parameter) -> Any:
    """The Optuna distribution that holds every value seen. The observed range stands in for the
    space's even where space.json records it: fANOVA integrates over the distributions' bounds, so
    the declared ones would change the shares with the same trials."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if parameter.kind == "categorical":
        return CategoricalDistribution(list(parameter.categories))
    if parameter.kind == "int":
        return IntDistribution(int(parameter.low), int(parameter.high), log=parameter.log)
    return FloatDistribution(parameter.low, parameter.high, log=parameter.log)


def _filled(parameter: Parameter, rows: list[int]) -> list[Any]:
    """The values of the trials `rows`, with a value drawn at random from those seen where the
    parameter is absent: a forest can then use it where it acts, but its absence cannot stand
    in for its parent (with absence coded as "(n/a)", `model` kept 0.02 of a 759-trial
    search's variance, its children's presence took the rest; 0.65 this way)."""
    seen = [v for v in parameter.values if v is not None]
    rng = np.random.default_rng(zlib.crc32(parameter.name.encode()))  # the same draws every time
    return [seen[int(rng.integers(len(seen)))] if parameter.values[i] is None else parameter.values[i] for i in rows]
