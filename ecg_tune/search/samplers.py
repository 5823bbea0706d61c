"""What the searchers take from an adapted space: Optuna's define-by-run function, the grid, and
the check of a sampled configuration's costs against the search's limits.

Both respect the space's conditions and cap each trial's limited options (the wavelet's levels)
at what its own input length and options allow (search/adapt.py's `trial_limits`). They take the
`AdaptedSpace` the pipeline made once; nothing here adapts a space again.

`CostCheck` estimates a sampled configuration's parameters and MACs before it is trained
(training/costs.config_costs, on the data's input length and classes), so that the Optuna
searcher rejects, and the grid skips, a configuration above `--max-params` / `--max-macs`.
`sample_configs` draws configurations at random through the same define-by-run function
(`--dry-run`'s share of feasible configurations, search/describe.py).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ecg_tune.config import default_value, make_config
from ecg_tune.errors import ConfigError
from ecg_tune.search.adapt import AdaptedSpace, DataFacts, trial_limits
from ecg_tune.search.parameters import Choice, Constant, IntRange
from ecg_tune.search.space import check_grid
from ecg_tune.training.costs import CostLimits, config_costs

if TYPE_CHECKING:  # optuna is only needed by the caller that runs a study
    import optuna

__all__ = ["CostCheck", "DefineByRun", "define_by_run", "grid", "grid_points", "optuna_trial_values",
           "sample_configs"]


class DefineByRun:
    """The define-by-run function for `OptunaSearch(space=...)`; a class so it pickles.

    Calls `trial.suggest_*` for each present parameter, in order, and returns the constants
    (Ray merges the returned dict over the suggested values).

    Limited options: Optuna 5.0 accepts an int parameter whose low/high change from trial to
    trial (storage only checks the distribution's kind and log flag; TPE fits its Parzen
    estimator within the range asked now), so an int range is suggested within
    [min(low, cap), min(high, cap)], cap being the trial's limit: every suggestion is feasible
    and is what Optuna records. A categorical's choices must NOT change between trials (Optuna
    raises), so a choice or constant is suggested from the fixed list and, if beyond this
    trial's limit, clamped in the returned dict (Optuna then records the unclamped value; the
    trial runs the clamped one).
    """

    def __init__(self, space: AdaptedSpace) -> None:
        self.space = space
        self.min_input = space.min_input

    def __call__(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        facts = self.space.facts
        chosen: dict[str, Any] = {}
        constants: dict[str, Any] = {}
        for key, p in self.space.parameters.items():
            if not p.active(chosen):
                continue
            if isinstance(p, Constant):
                chosen[key] = constants[key] = p.value
            elif isinstance(p, Choice):
                chosen[key] = trial.suggest_categorical(key, list(p.values))  # type: ignore[arg-type]
            elif isinstance(p, IntRange):
                high = min(p.high, trial_limits(chosen, facts, self.min_input).get(key, p.high))
                chosen[key] = trial.suggest_int(key, min(p.low, high), high, step=p.step, log=p.log)
            else:
                chosen[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        constants.update(clamped_to_limits(chosen, facts, self.min_input))
        return constants


def define_by_run(space: AdaptedSpace) -> DefineByRun:
    """The `space=` argument of the Optuna searcher for this space on its data.

    A trial's config is `{**trial.params, **returned}`; keys whose condition failed are absent.
    """
    return DefineByRun(space)


def optuna_trial_values(params: dict[str, Any], returned: dict[str, Any] | None) -> dict[str, Any]:
    """A trial's config as Ray builds it: suggested values, then the returned dict over them."""
    return {**params, **(returned or {})}


def grid(space: AdaptedSpace) -> list[dict[str, Any]]:
    """Every combination of the choice values, conditions respected, constants included.

    A parameter whose condition fails does not multiply the grid. Each config's limited options
    are capped for its input length and options; configs that become equal (short data) are
    kept once, so a grid may have fewer points than on long data (`grid_points` says how many
    were merged).
    """
    return grid_points(space)[0]


def grid_points(space: AdaptedSpace) -> tuple[list[dict[str, Any]], int]:
    """The grid and the number of its configs that became duplicates after capping."""
    try:
        check_grid(space.space)
    except ValueError as exc:
        raise ConfigError(f"{space.where}: {exc}") from None
    rows: list[dict[str, Any]] = [{}]
    for key, p in space.parameters.items():
        grown: list[dict[str, Any]] = []
        for row in rows:
            if p.active(row):
                grown.extend({**row, key: value} for value in p.possible())
            else:
                grown.append(row)
        rows = grown
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        row = {**row, **clamped_to_limits(row, space.facts, space.min_input)}
        unique.setdefault(json.dumps(row, sort_keys=True), row)
    return list(unique.values()), len(rows) - len(unique)


def clamped_to_limits(chosen: dict[str, Any], facts: DataFacts, min_input: int) -> dict[str, Any]:
    """The trial's limited options (chosen or default) that exceed its limits, at the limit."""
    out = {}
    for key, limit in trial_limits(chosen, facts, min_input).items():
        if chosen.get(key, default_value(key)) > limit:
            out[key] = limit
    return out


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines ("A new study created in memory with name: ...") and its warnings that
    a feature is experimental off inside: every study here is one the user follows through
    ecg-tune's own lines, and the experimental features used are chosen knowingly."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def sample_configs(space: AdaptedSpace, n: int, seed: int = 0,
                   start: tuple[dict[str, Any], ...] = ()) -> list[dict[str, Any]]:
    """`n` configurations drawn by Optuna's RandomSampler through the space's define-by-run
    function (conditions, constants and limited options as a search's trials get them), after
    one per `start` point (its values, the keys it leaves out drawn), as the searcher runs them."""
    import optuna

    with quiet_optuna():  # not a study anyone follows
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for point in start:
        study.enqueue_trial(dict(point))
    space_function = define_by_run(space)
    configs = []
    for _ in range(len(start) + n):
        trial = study.ask()
        constants = space_function(trial)  # first: it makes the suggest calls behind trial.params
        configs.append(optuna_trial_values(trial.params, constants))
    return configs


class CostCheck:
    """A sampled configuration's estimated costs (training/costs.config_costs) against the limits
    checkable before training; a class so that it pickles with the searcher. Estimates are kept
    per network (the model, the transform, their options, the input length): configurations
    that differ in training keys only (lr, augmentation) cost one estimate."""

    def __init__(self, space: AdaptedSpace, limits: CostLimits) -> None:
        self.limits = limits
        self.default_input_length = space.facts.default_input_length
        self.n_classes = len(space.facts.classes)
        self._known: dict[str, dict[str, float]] = {}

    def figures(self, values: dict[str, Any]) -> dict[str, float]:
        """The estimated `n_params` and `macs` of a trial's sampled values."""
        config = make_config(values, where="sampled configuration")
        length = config.input_length or self.default_input_length
        key = json.dumps([config.model, config.part_options("model"), config.transform,
                          config.part_options("transform"), length], sort_keys=True, default=str)
        if key not in self._known:
            self._known[key] = config_costs(config, length, self.n_classes).reported()
        return self._known[key]

    def broken(self, values: dict[str, Any]) -> str:
        """The limits the configuration breaks before training, in words ("" when none)."""
        return self.limits.broken(self.figures(values)) if self.limits.before_training else ""

    def violations(self, values: dict[str, Any]) -> dict[str, float]:
        """Each pre-training limit's relative excess (Optuna's constraints; <= 0: within it)."""
        return self.limits.violations(self.figures(values)) if self.limits.before_training else {}
