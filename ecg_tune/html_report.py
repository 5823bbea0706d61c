"""report.html: a run folder as one self-contained, interactive page, and the parameter importances.

Owns the page a search leaves beside its results (written after the search's exports, rewritten
by the refit, rebuilt by `ecg-tune report` for any finished run) and the importance computation
whose top three the end of a search prints. The page has:

* a header saying what was searched (data, the parameters that varied, budget, trials, the metric
  and its direction) and when;
* the search: the best score so far over time with every reported epoch, every trial's learning
  curve, parameter importances, a parallel-coordinates view and per-parameter slices of the
  trials' configurations against their scores, and a table of trials sortable by any column;
* once refitted, the test report of report.json: metrics with their 95 % intervals beside the
  validation scores, per-class figures, the confusion matrix, the refitted config's training
  curves and the winning config.

Everything is read through `runs.RunFolder`; the plots are plotly figures whose JavaScript
(plotly.js) is embedded once in the page's head, so the file opens offline, with nothing loaded
from a URL. Importances come from Optuna's fANOVA evaluator on studies rebuilt from the trials,
conditional parameters assessed on the trials where they are set (`parameter_importances`).
"""

from __future__ import annotations

import html
import math
import os
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ecg_tune.errors import EcgTuneError
from ecg_tune.runs import BestConfig, RunFolder
from ecg_tune.training.metrics import HEADLINE_METRICS, direction, running_best

if TYPE_CHECKING:  # plotly is imported where a figure is built: it costs import time
    from plotly.graph_objects import Figure

REPORT_NAME = "report.html"
# Below three trials a forest has nothing to split on; the page says so instead of showing numbers.
MIN_TRIALS = 3
NOT_APPLICABLE = "(n/a)"  # the category of a conditional parameter in trials where it is absent
# Numbers spanning this ratio or more and spread like log-uniform samples (learning rates, weight
# decays) are shown on a log scale: a linear axis would squeeze them into one corner.
_LOG_RATIO = 20.0
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_BEST_COLOUR = "#d62728"


# --------------------------------------------------------------------------------------------
# The searched parameters, as the trials show them
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parameter:
    """One parameter that took more than one value over the trials (a column `config/<name>`)."""

    name: str
    kind: Literal["categorical", "int", "float"]
    values: list[Any]  # one per trial row: str (categorical), int, float; None where absent
    categories: tuple[str, ...] = ()  # categorical: the values seen, in order
    log: bool = False  # numeric: looks sampled on a log scale (`_log_scaled`)

    @property
    def defined(self) -> int:
        return sum(v is not None for v in self.values)

    @property
    def conditional(self) -> bool:
        return self.defined < len(self.values)

    @property
    def low(self) -> float:
        return float(min(v for v in self.values if v is not None))

    @property
    def high(self) -> float:
        return float(max(v for v in self.values if v is not None))

    def describe(self) -> str:
        """`lr 0.0001 to 0.01, log scale`, `model: simple_cnn, cnn_svm`, and where it was set."""
        if self.kind == "categorical":
            text = f"{self.name}: {', '.join(self.categories)}"
        else:
            text = f"{self.name} {_fmt(self.low)} to {_fmt(self.high)}" + (", log scale" if self.log else "")
        if self.conditional:
            text += f" (set in {self.defined} of {len(self.values)} trials)"
        return text

    def distribution(self) -> Any:
        """The Optuna distribution that holds every value seen (the space itself is not recorded
        in the run folder, so the observed range stands in for it)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.categories))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def filled(self, rows: list[int]) -> list[Any]:
        """The values of the trials `rows`, with a value drawn at random from those seen where the
        parameter is absent: a forest can then use it where it acts, but its absence cannot stand
        in for its parent (with absence coded as "(n/a)", `model` kept 0.02 of a 759-trial
        search's variance, its children's presence took the rest; 0.65 this way)."""
        seen = [v for v in self.values if v is not None]
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))  # the same draws every time
        return [seen[int(rng.integers(len(seen)))] if self.values[i] is None else self.values[i] for i in rows]


def search_parameters(trials: pd.DataFrame) -> tuple[list[Parameter], dict[str, Any]]:
    """The parameters that varied over the rows of a trials table, and those held constant (with
    their value). A parameter set in only some trials (a conditional one) counts as varying when
    its set values differ; one value wherever set is a constant (its presence follows its parent)."""
    varying, constant = [], {}
    for column in trials.columns:
        if not column.startswith("config/"):
            continue
        name = column.removeprefix("config/")
        raw = [None if _missing(v) else v for v in trials[column].tolist()]
        given = [v for v in raw if v is not None]
        if not given:
            continue
        kind, values = _typed(given)
        typed = iter(values)
        column_values = [None if v is None else next(typed) for v in raw]
        distinct = list(dict.fromkeys(values))
        if len(distinct) < 2:
            constant[name] = distinct[0]
            continue
        if kind == "categorical":
            varying.append(Parameter(name, kind, column_values, categories=tuple(_natural_order(distinct))))
        else:
            varying.append(Parameter(name, kind, column_values, log=_log_scaled(values)))
    return varying, constant


def _typed(values: list[Any]) -> tuple[Literal["categorical", "int", "float"], list[Any]]:
    """Whole numbers as int, other numbers as float, anything else (text, booleans, numbers mixed
    with text such as svm_gamma's "scale") as categorical text."""
    if any(isinstance(v, (bool, np.bool_)) for v in values):
        return "categorical", [str(v) for v in values]
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return "categorical", [str(v) for v in values]
    if not all(math.isfinite(v) for v in numbers):
        return "categorical", [str(v) for v in values]
    if all(v.is_integer() for v in numbers):
        return "int", [int(v) for v in numbers]
    return "float", numbers


def _log_scaled(values: list[float]) -> bool:
    """Whether numbers look sampled on a log scale (learning rates, weight decays): positive,
    spanning _LOG_RATIO or more, and with their median nearer the geometric than the arithmetic
    middle of their range (a uniform 0.005 to 0.5 dropout spans 100 too, but is linear)."""
    low, high = min(values), max(values)
    if low <= 0 or high / low < _LOG_RATIO:
        return False
    median = math.log(float(np.median(values)))
    return abs(median - math.log(math.sqrt(low * high))) < abs(median - math.log((low + high) / 2))


def _natural_order(values: list[str]) -> list[str]:
    """Numbers by value, then text alphabetically: batch sizes 16, 32, 64, not 16, 64, 32."""
    def key(value: str) -> tuple[int, float, str]:
        try:
            return 0, float(value), value
        except ValueError:
            return 1, 0.0, value
    return sorted(values, key=key)


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or dict value is not missing
        return False


def trial_scores(trials: pd.DataFrame, metric: str) -> pd.Series:
    """Each trial's score: its best `metric` over its epochs (what ranked it), NaN if none."""
    column = f"best/{metric}"
    if column not in trials.columns:
        return pd.Series(np.nan, index=trials.index)
    return pd.to_numeric(trials[column], errors="coerce")


# --------------------------------------------------------------------------------------------
# Importances
# --------------------------------------------------------------------------------------------

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


def parameter_importances(trials: pd.DataFrame, metric: str) -> Importances:
    """fANOVA importances of the parameters that varied, over the trials that reported `metric`.

    The Tune trials become Optuna studies: one complete trial per scored Tune trial, its value the
    trial's best `metric`, with distributions spanning the values seen. fANOVA assesses only
    parameters set in every trial it is given, so the parameters are grouped by the trials they
    are set in: those set everywhere are assessed on all trials; each conditional group (e.g.
    the SVM's options, set where the model is cnn_svm) on its own trials, and scaled by that
    subset's share of the total variance (the law of total variance: n_s var_s / n var is the
    within-subset part). Each fit also takes every other parameter that varies in its trials,
    filled in at random where absent (`Parameter.filled`): without them, the forest fitted to all
    trials explains the conditional parameters' effects with whatever else varies (a noise
    parameter got 0.4 to 0.75 in a test where one conditional parameter drove the score).

    Why not PED-ANOVA, Optuna's default, which handles conditional parameters itself: measured on
    a 759-trial ECG200 search, it ranked fine-grained numeric parameters far above categorical
    ones and gave `model` 0.00, where this gives it 0.66 of the score's variance, the most by far.
    """
    scores = trial_scores(trials, metric)
    scored = trials[scores.notna()].reset_index(drop=True)
    values = scores[scores.notna()].to_numpy(float)
    n = len(values)
    if n < MIN_TRIALS:
        return Importances(trials=n, note=f"importances need at least {MIN_TRIALS} trials that reported "
                                          f"{metric}; this search has {n}")
    parameters, _ = search_parameters(scored)
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

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" line per study
    try:
        with warnings.catch_warnings():
            # normalize=False is marked experimental; the raw shares are what the scaling needs.
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="minimize" if direction(metric) == "min" else "maximize")
            # Only parameters that vary in these trials: a forest learns nothing from a constant.
            varying = [(p, values) for p in parameters if len(set(values := p.filled(rows))) > 1]
            distributions = {p.name: p.distribution() for p, _ in varying}
            for k, score in enumerate(scores):
                study.add_trial(optuna.trial.create_trial(
                    params={p.name: values[k] for p, values in varying}, distributions=distributions,
                    value=float(score)))
            found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0),
                                          params=list(distributions), normalize=False)
    except RuntimeError:  # "zero total variance in all trees": nothing to attribute
        return {}
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {k: max(0.0, float(v)) for k, v in found.items()}


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

@dataclass
class HtmlReport:
    """A written report.html and the importances it shows."""

    path: Path
    importances: Importances
    size: int  # bytes

    def summary(self) -> str:
        """What the end of a search prints: the three parameters that mattered most, and where
        the page is."""
        top = self.importances.top(3)
        if top:
            names = ", ".join(f"{name} {value:.2f}" for name, value in top)
            first = (f"parameters that mattered most (the share of the score's variance each explains, fANOVA "
                     f"over {self.importances.trials} trials): {names}")
        else:
            first = f"parameter importances: {self.importances.note}"
        return f"{first}\nreport: {self.path}"


def write_html_report(run: RunFolder, histories: dict[str, pd.DataFrame] | None = None) -> HtmlReport:
    """Write `<run>/report.html` from the run folder (`histories`: the trials' per-epoch results
    when the caller has read them already). A folder without best_config.json is an EcgTuneError."""
    run.best()  # not a finished search: say so before the lock creates anything in the folder
    with run.lock():  # not while a search or refit writes the folder
        page, importances = build_page(run, histories)
        path = run.path / REPORT_NAME
        # Written beside and renamed into place, as report.json is: a reader never sees half a page.
        partial = path.with_name(path.name + ".partial")
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, path)
    return HtmlReport(path=path, importances=importances, size=path.stat().st_size)


def build_page(run: RunFolder, histories: dict[str, pd.DataFrame] | None = None) -> tuple[str, Importances]:
    """The page's HTML and the importances in it."""
    from plotly.offline import get_plotlyjs

    best = run.best()
    trials = run.trials()
    history_note = None
    if histories is None:
        try:
            histories = run.histories()
        except EcgTuneError as exc:  # an unreachable storage still leaves the tables to show
            histories, history_note = {}, f"the trials' per-epoch results could not be read: {exc}"
    report = _read_report(run)
    metric = best.metric
    scores = trial_scores(trials, metric)
    parameters, constants = search_parameters(trials)
    importances = parameter_importances(trials, metric)
    header = _header(run, best, trials, parameters, constants, histories, report)  # in the space's order
    # The views list the parameters by importance, the most important first.
    order = {name: i for i, name in enumerate(importances.values)}
    parameters.sort(key=lambda p: order.get(p.name, len(order)))

    sections = [header]
    sections.append(_search_section(best, trials, scores, parameters, histories, importances, history_note))
    if report is not None:
        sections.append(_test_section(best, report, histories))
    title = f"ECG search report: {run.path.name}"
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n"
            # plotly.js itself, inline (what include_plotlyjs=True embeds), once for every figure.
            f"<script>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>\n"
            f"<script>{get_plotlyjs()}</script>\n</head>\n<body>\n<main>\n"
            + "\n".join(sections)
            + f"\n</main>\n<script>{_SORT_JS}</script>\n</body>\n</html>\n")
    return page, importances


def _read_report(run: RunFolder) -> dict[str, Any] | None:
    """report.json when the run was refitted, else None; a damaged one is a one-line error."""
    if not run.report_path.is_file():
        return None
    try:
        report = run.report()
        test = report["test"]
        _ = (test["accuracy"], test["ci95"], test["classes"], test["confusion_matrix"], test["per_class"])
    except (ValueError, KeyError, TypeError) as exc:
        raise EcgTuneError(f"{run.report_path}: not a refit's report.json ({type(exc).__name__}: {exc})") from None
    return report


# header -------------------------------------------------------------------------------------

def _header(run: RunFolder, best: BestConfig, trials: pd.DataFrame, parameters: list[Parameter],
            constants: dict[str, Any], histories: dict[str, pd.DataFrame], report: dict[str, Any] | None) -> str:
    metric = best.metric
    better = "lower is better" if direction(metric) == "min" else "higher is better"
    statuses = trials["status"].value_counts().to_dict() if "status" in trials.columns else {}
    counts = ", ".join(f"{n} {_STATUS_WORDS.get(s, s)}" for s, n in statuses.items())
    epochs_trained = int(pd.to_numeric(trials.get("epochs", pd.Series(dtype=float)), errors="coerce").sum())
    start, end = _clock(histories, metric) or (None, None)
    validation = (f"{best.cv}-fold cross-validation over the train + validation records (each score is "
                  f"the mean of the folds)" if best.cv > 1 else "the split's validation records")
    rows = [
        ("Data", _e(best.data)),
        ("Ranked by", f"<code>{_e(metric)}</code> ({better}), each trial scored at its best epoch, on {validation}"),
        ("Searched", "<br>".join(_e(p.describe()) for p in parameters) or "nothing varied"),
        ("Held constant", _e(", ".join(f"{k} = {_fmt(v)}" + _where_set(trials, k) for k, v in constants.items()))
         or "none"),
        ("Budget", _e(f"up to {best.config.get('epochs', '?')} epochs per trial; {len(trials)} trials "
                      f"({counts or 'none recorded'}); {epochs_trained} epochs trained in all"
                      + (f"; {_duration(end - start)} from the first trial's start to the last report"
                         if start is not None and end is not None else ""))),
        ("When", _e(_when(start, run))),
        ("Best trial", _e(f"{best.trial_id}: {metric} {best.score:.4f}"
                          + (f" (± {best.spread:.4f} over folds)" if best.spread is not None else "")
                          + f" at epoch {best.epoch}")),
        ("Its configuration", _e(", ".join(f"{k} = {_fmt(v)}" for k, v in best.config.items()))),
    ]
    if report is not None:
        test = report["test"]
        from ecg_tune.report import headline as report_headline

        headline = report_headline(test, "; ")
        rows.append(("Test set", _e(f"{headline} on {test['n_records']} held-out records, "
                                    f"refitted for {_epochs(report['epochs'])}") + " (<a href=\"#test\">details</a>)"))
    else:
        rows.append(("Test set", "not evaluated yet: <code>ecg-tune refit --run "
                                 f"{_e(str(run.path))}</code> retrains the best config and tests it once"))
    table = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    links = ['<a href="#progress">progress</a>', '<a href="#importance">importances</a>',
             '<a href="#parallel">parallel coordinates</a>', '<a href="#slices">slices</a>',
             '<a href="#trials">trials</a>'] + (['<a href="#test">test report</a>'] if report is not None else [])
    return (f"<header>\n<h1>Hyperparameter search: {_e(run.path.name)}</h1>\n"
            f"<p class=\"lede\">A Ray Tune search for the best ECG classifier configuration: each trial "
            f"trained one configuration and was scored on validation data after every epoch. This page "
            f"shows how the search went, which settings mattered"
            + (", and how the winner did on test records it never saw" if report is not None else "")
            + f". Written {_e(time.strftime('%Y-%m-%d %H:%M %Z'))} from {_e(str(run.path))}.</p>\n"
            f"<table class=\"facts\">\n{table}\n</table>\n<nav>{' · '.join(links)}</nav>\n</header>")


def _where_set(trials: pd.DataFrame, name: str) -> str:
    """` (in 4 of 9 trials)` for a parameter some configurations do not use, else nothing."""
    given = int(trials[f"config/{name}"].notna().sum())
    return f" (in {given} of {len(trials)} trials)" if given < len(trials) else ""


_STATUS_WORDS = {"stopped": "stopped early by the scheduler", "errored": "failed"}


def _clock(histories: dict[str, pd.DataFrame], metric: str) -> tuple[float, float] | None:
    """Unix times of the search's start (its first trial's) and of its last report; None without
    times. report.timed_reports gives each report's time since the start, and, asked to count
    from 0, its Unix time: the difference is the start."""
    from ecg_tune.report import timed_reports

    since_start = timed_reports(histories, metric)
    unix = timed_reports(histories, metric, started=0.0)
    if since_start is None or unix is None or not len(unix[0]):
        return None
    return float(unix[0][0] - since_start[0][0]), float(unix[0][-1])


def _when(start: float | None, run: RunFolder) -> str:
    if start is not None:
        return "started " + time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(start))
    # Without Tune's per-epoch results, the best config's file time says when the search ended.
    written = run.best_config_path.stat().st_mtime
    return "results written " + time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(written))


# search -------------------------------------------------------------------------------------

def _search_section(best: BestConfig, trials: pd.DataFrame, scores: pd.Series, parameters: list[Parameter],
                    histories: dict[str, pd.DataFrame], importances: Importances, history_note: str | None) -> str:
    metric = best.metric
    scored = int(scores.notna().sum())
    better = "lowest" if direction(metric) == "min" else "highest"
    parts = ["<section id=\"search\">\n<h2>The search</h2>"]
    if history_note:
        parts.append(f"<p class=\"note\">{_e(history_note)}</p>")

    figure, timed = _progress_figure(trials, histories, metric, best.trial_id)
    dots = (f"Every grey dot is one epoch of one trial: the {metric} it scored on validation data then, "
            f"against the seconds since the search started." if timed else
            f"Every grey dot is one trial's best {metric} (the per-epoch results are not available), in the "
            f"order the trials were created.")
    parts.append(_plot("progress", "Progress: best score so far", figure,
                       f"{dots} The blue line is the {better} score found so far, so it steps only when a "
                       f"trial beats all before it; where it flattens out, more search time bought little. "
                       f"Red dots are the winning trial. Hover a dot for its trial and epoch."))
    parts.append(_plot("curves", "Learning curves of every trial", _curves_figure(histories, metric, best.trial_id),
                       f"Each line is one trial's {metric} after each epoch of training (red: the winner). "
                       f"Lines that end early are trials the scheduler (ASHA) stopped because they trailed "
                       f"the others at the same epoch, or that stopped themselves when their validation "
                       f"loss stalled."))

    if importances.values:
        unassessed = ", ".join(f"{name} ({k})" for name, k in importances.unassessed.items())
        unassessed = f" Set in too few trials to assess (trials): {unassessed}." if unassessed else ""
        caption = (f"Which parameters mattered: how much of the variation in {metric} between trials each "
                   f"parameter explains on its own. {importances.method} A parameter label with a trial count "
                   f"is conditional. Read it as a ranking rather than exact numbers: with "
                   f"{importances.trials} trials they are rough, scores of trials stopped after few epochs "
                   f"are low for that reason alone, and a parameter the search hardly varied cannot show its "
                   f"effect.{unassessed}")
        parts.append(_plot("importance", "Parameter importances", _importance_figure(importances), caption))
    else:
        parts.append(f"<h3 id=\"importance\">Parameter importances</h3>\n<p class=\"note\">Not computed: "
                     f"{_e(importances.note or '')}. A longer search (more trials) gives them.</p>")

    if parameters and scored:
        # Looked at on the 14-trial CinC run: 24 axes overlapped their tick labels and read as noise;
        # the most important ones carry the picture, the slices and the table show the rest.
        axes = parameters[:PARALLEL_AXES]
        rest = (f" Only the {PARALLEL_AXES} most important of the {len(parameters)} parameters have an axis; the "
                f"slices and the trial table show all of them." if len(parameters) > PARALLEL_AXES else "")
        parts.append(_plot("parallel", "Parallel coordinates: configurations and their scores",
                           _parallel_figure(trials, scores, axes, metric),
                           f"Each line is one of the {scored} trials with a score, crossing every axis at its "
                           f"value of that parameter and ending at its score (right axis); the colour is the "
                           f"score too (yellow: best). Axes are ordered by importance, most important on the "
                           f"left. {NOT_APPLICABLE} marks a parameter the trial's configuration does not use "
                           f"(e.g. the wavelet of a trial without a wavelet transform). Drag along an axis to "
                           f"keep only the lines through that range; drag an axis title to reorder.{rest}"))
        parts.append(_plot("slices", "Slices: score against each parameter",
                           _slices_figure(trials, scores, parameters, metric, best.trial_id),
                           f"One panel per parameter: each dot is a trial, placed at its value of that "
                           f"parameter (across) and its {metric} (up); the red dot is the winner. A clear "
                           f"trend or a value whose dots all sit high means the parameter mattered on its "
                           f"own; a flat cloud means it did not, or that other parameters hid its effect. "
                           f"Panel titles say in how many trials a conditional parameter was set."))
    else:
        parts.append("<h3 id=\"parallel\">Parallel coordinates</h3>\n<p class=\"note\">No parameter varied, or no "
                     "trial reported a score: nothing to compare.</p><span id=\"slices\"></span>")
    parts.append(_trial_table(trials, scores, parameters, metric, best.trial_id))
    parts.append("</section>")
    return "\n".join(parts)


def _progress_figure(trials: pd.DataFrame, histories: dict[str, pd.DataFrame], metric: str,
                     winner: str) -> tuple[Figure, bool]:
    """Every reported value and the running best, against seconds since the search started (or,
    without times, against trial number with each trial's best); whether the x axis is time."""
    import plotly.graph_objects as go

    from ecg_tune.report import per_trial_order, timed_reports

    figure = go.Figure()
    points: list[tuple[float, float, str, int | None]] = []  # x, value, trial, epoch
    everything = timed_reports(histories, metric)
    if everything is not None:
        x_all, y_all = everything
        # Each trial's own reports, timed from the search's start, keep their trial's name.
        origin = (_clock(histories, metric) or (0.0, 0.0))[0]
        x_label, unit, dots = "seconds since the search started", " s", "a trial's epoch"
        for trial_id, history in histories.items():
            if history is None or metric not in history.columns:
                continue
            # The epoch is the report's own training_iteration, not its position: rows without a
            # score are left out, as timed_reports leaves them out.
            frame = history.reindex(columns=[metric, "timestamp", "training_iteration"]).apply(
                pd.to_numeric, errors="coerce").dropna(subset=[metric, "timestamp"])
            points += [(float(t) - origin, float(v), trial_id, None if math.isnan(e) else int(e))
                       for t, v, e in zip(frame["timestamp"], frame[metric], frame["training_iteration"],
                                          strict=True)]
    else:
        x_all, y_all = per_trial_order(trials, histories, metric)
        x_label, unit, dots = "trial number", "", "a trial's best epoch"
        ids = trials["trial_id"].astype(str).tolist() if "trial_id" in trials.columns else []
        points = [(float(x), float(y), ids[int(x) - 1] if int(x) - 1 < len(ids) else "?", None)
                  for x, y in zip(x_all, y_all, strict=True)]
    if len(x_all) == 0:
        return _empty_figure("no trial reported " + metric), everything is not None
    others = [p for p in points if p[2] != winner]
    mine = [p for p in points if p[2] == winner]
    for chosen, name, colour, size in ((others, dots, "rgba(110,110,110,0.55)", 6),
                                       (mine, f"winning trial {winner}", _BEST_COLOUR, 8)):
        if chosen:
            figure.add_trace(go.Scatter(
                x=[p[0] for p in chosen], y=[p[1] for p in chosen], mode="markers", name=name,
                marker={"color": colour, "size": size},
                text=[f"trial {p[2]}" + (f", epoch {p[3]}" if p[3] is not None else "") for p in chosen],
                hovertemplate="%{text}<br>" + metric + " %{y:.4f}<br>at %{x:.1f}" + unit + "<extra></extra>"))
    best_line = running_best(metric, np.asarray(y_all, dtype=float))
    figure.add_trace(go.Scatter(x=x_all, y=best_line, mode="lines",
                                line={"shape": "hv", "width": 3, "color": "#1f77b4"},
                                name=f"best so far ({best_line[-1]:.4f})",
                                hovertemplate="best so far %{y:.4f}<extra></extra>"))
    figure.update_layout(xaxis_title=x_label, yaxis_title=metric, height=430)
    return figure, everything is not None


def _curves_figure(histories: dict[str, pd.DataFrame], metric: str, winner: str) -> Figure:
    import plotly.graph_objects as go

    from ecg_tune.report import metric_curve

    figure = go.Figure()
    # The winner is drawn last, so it stays on top of the others.
    for trial_id, history in sorted(histories.items(), key=lambda item: item[0] == winner):
        curve = metric_curve(history, metric)
        if curve is None:
            continue
        is_winner = trial_id == winner
        figure.add_trace(go.Scatter(
            x=curve[0], y=curve[1], mode="lines+markers", name=f"trial {trial_id}", showlegend=is_winner,
            line={"color": _BEST_COLOUR if is_winner else "rgba(110,110,110,0.45)", "width": 3 if is_winner else 1},
            marker={"size": 5 if is_winner else 3},
            hovertemplate=f"trial {trial_id}<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>"))
    if not figure.data:
        return _empty_figure("no per-epoch results")
    figure.update_layout(xaxis_title="epoch", yaxis_title=metric, height=400)
    return figure


def _importance_figure(importances: Importances) -> Figure:
    import plotly.graph_objects as go

    names = list(importances.values)[::-1]  # the most important at the top
    labels = [name + (f" ({importances.basis[name]} trials)" if importances.basis[name] < importances.trials else "")
              for name in names]
    values = [importances.values[name] for name in names]
    figure = go.Figure(go.Bar(
        x=values, y=labels, orientation="h", marker_color="#1f77b4",
        text=[f"{v:.2f}" for v in values], textposition="outside",
        customdata=[importances.basis[name] for name in names],
        hovertemplate="%{y}: %{x:.3f}<br>assessed on %{customdata} trials<extra></extra>"))
    figure.update_layout(xaxis_title="share of the score's variance explained on its own",
                         xaxis_range=[0, max(max(values) * 1.18, 0.05)], height=max(260, 28 * len(names) + 110))
    return figure


PARALLEL_AXES = 10  # parameters with an axis in the parallel-coordinates view, by importance


def _parallel_figure(trials: pd.DataFrame, scores: pd.Series, parameters: list[Parameter], metric: str) -> Figure:
    import plotly.graph_objects as go

    keep = np.flatnonzero(scores.notna().to_numpy())
    dimensions = [_axis(p, keep) for p in parameters]
    score = scores.to_numpy(float)[keep]
    dimensions.append({"label": f"score: {metric}", "values": score})
    figure = go.Figure(go.Parcoords(
        line={"color": score, "colorscale": "Viridis", "reversescale": direction(metric) == "min",
              "showscale": True, "colorbar": {"title": {"text": metric}}},
        dimensions=dimensions, labelangle=-20 if len(dimensions) > 8 else 0, labelside="top"))
    figure.update_layout(height=520, margin={"t": 110 if len(dimensions) > 8 else 70, "l": 70, "r": 40})
    return figure


def _axis(parameter: Parameter, rows: np.ndarray) -> dict[str, Any]:
    """One parallel-coordinates axis: categories as evenly spaced ticks ((n/a) last), numbers on
    their own (or log10) scale with (n/a) just below the range."""
    values = [parameter.values[i] for i in rows]
    if parameter.kind == "categorical":
        categories = list(parameter.categories) + ([NOT_APPLICABLE] if any(v is None for v in values) else [])
        index = {c: i for i, c in enumerate(categories)}
        return {"label": parameter.name, "values": [index[NOT_APPLICABLE if v is None else v] for v in values],
                "tickvals": list(range(len(categories))), "ticktext": categories,
                "range": [-0.3, len(categories) - 0.7]}
    low, high = parameter.low, parameter.high
    if parameter.log:
        low, high = math.log10(low), math.log10(high)
    ticks = list(np.linspace(low, high, 5))
    if parameter.kind == "int":  # whole-number ticks, each once
        whole = sorted({int(round(10 ** t if parameter.log else t)) for t in ticks})
        ticks = [math.log10(v) if parameter.log else float(v) for v in whole]
    shown = [10 ** t if parameter.log else t for t in ticks]
    text = [_fmt(int(round(v)) if parameter.kind == "int" else v) for v in shown]
    na = low - 0.15 * ((high - low) or 1.0)  # a slot below the range for trials without it
    coded = [na if v is None else (math.log10(v) if parameter.log else float(v)) for v in values]
    if any(v is None for v in values):
        ticks, text = [na, *ticks], [NOT_APPLICABLE, *text]
    return {"label": parameter.name + (" (log)" if parameter.log else ""), "values": coded,
            "tickvals": ticks, "ticktext": text,
            "range": [min(coded + [low]), high]}


def _slices_figure(trials: pd.DataFrame, scores: pd.Series, parameters: list[Parameter], metric: str,
                   winner: str) -> Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    columns = min(3, len(parameters))
    rows = math.ceil(len(parameters) / columns)
    titles = [p.name + (f" (set in {p.defined} of {len(p.values)})" if p.conditional else "") for p in parameters]
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.08,
                           vertical_spacing=min(0.12, 0.5 / rows))
    ids = trials["trial_id"].astype(str).tolist() if "trial_id" in trials.columns else [""] * len(trials)
    score = scores.to_numpy(float)
    for n, parameter in enumerate(parameters):
        row, column = n // columns + 1, n % columns + 1
        if parameter.kind == "categorical":
            # A trial without the parameter still shows, in the (n/a) column.
            keep = [i for i in range(len(score)) if math.isfinite(score[i])]
            x = [NOT_APPLICABLE if parameter.values[i] is None else parameter.values[i] for i in keep]
        else:
            keep = [i for i in range(len(score)) if math.isfinite(score[i]) and parameter.values[i] is not None]
            x = [parameter.values[i] for i in keep]
        colours = [_BEST_COLOUR if ids[i] == winner else "#1f77b4" for i in keep]
        figure.add_trace(go.Scatter(
            x=x, y=[score[i] for i in keep], mode="markers", showlegend=False,
            marker={"color": colours, "size": [10 if ids[i] == winner else 7 for i in keep], "opacity": 0.75},
            text=[f"trial {ids[i]}" for i in keep],
            hovertemplate="%{text}<br>" + parameter.name + " %{x}<br>" + metric + " %{y:.4f}<extra></extra>"),
            row=row, col=column)
        if parameter.kind == "categorical":
            order = list(parameter.categories) + ([NOT_APPLICABLE] if NOT_APPLICABLE in x else [])
            figure.update_xaxes(type="category", categoryorder="array", categoryarray=order, row=row, col=column)
        elif parameter.log:
            figure.update_xaxes(type="log", row=row, col=column)
        if column == 1:
            figure.update_yaxes(title_text=metric, row=row, col=column)
    figure.update_layout(height=max(320, 290 * rows))
    return figure


def _trial_table(trials: pd.DataFrame, scores: pd.Series, parameters: list[Parameter], metric: str,
                 winner: str) -> str:
    """Every trial as a row, best first; clicking a column header sorts by it (the page's own
    few lines of script; cells carry their raw value for sorting)."""
    if trials.empty:
        return "<h3 id=\"trials\">Trials</h3>\n<p class=\"note\">The search recorded no trials.</p>"
    metrics = [c for c in trials.columns if c.startswith("best/") and c != f"best/{metric}"]
    header = ["trial", "status", "epochs", "best epoch", f"score: {metric}",
              *[p.name for p in parameters], *[c.removeprefix("best/") for c in metrics]]
    ascending = direction(metric) == "min"
    order = scores.sort_values(ascending=ascending, na_position="last", kind="stable").index
    body = []
    for index in order:
        row = trials.loc[index]
        values: list[Any] = [row.get("trial_id"), row.get("status"), row.get("epochs"), row.get("best_epoch"),
                             scores[index]]
        values += [p.values[trials.index.get_loc(index)] for p in parameters]
        values += [row[c] for c in metrics]
        cells = []
        for column, value in enumerate(values):
            shown = NOT_APPLICABLE if value is None and 5 <= column < 5 + len(parameters) else _fmt(value)
            raw = "" if _missing(value) else str(value)
            cells.append(f"<td data-value=\"{_e(raw)}\">{_e(shown)}</td>")
        marker = " class=\"winner\"" if str(row.get("trial_id")) == winner else ""
        body.append(f"<tr{marker}>{''.join(cells)}</tr>")
    # Trial ids are hex and some read as numbers ("49975e10"): that column sorts as text.
    as_text = ' data-text="1"'
    head = "".join(f"<th title=\"sort by {_e(h)}\"{as_text if i == 0 else ''}>{_e(h)}</th>"
                   for i, h in enumerate(header))
    caption = (f"One row per trial, best {metric} first (the winner highlighted). Click a column header to "
               f"sort by it, again to reverse. 'epochs' is how many it trained; 'best epoch' is where its "
               f"score peaked; the metric columns are each metric's best value over its epochs. "
               f"{NOT_APPLICABLE}: the parameter does not apply to that configuration. Status: completed (ran "
               f"its epochs or stopped itself when it stalled), stopped (cut short by the scheduler for "
               f"trailing others), errored (failed).")
    return (f"<h3 id=\"trials\">Trials</h3>\n<div class=\"scroll\"><table class=\"sortable trials\">\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody></table></div>\n"
            f"<p class=\"caption\">{_e(caption)}</p>")


# test ---------------------------------------------------------------------------------------

def _test_section(best: BestConfig, report: dict[str, Any], histories: dict[str, pd.DataFrame]) -> str:
    test = report["test"]
    classes = [str(c) for c in test["classes"]]
    parts = ["<section id=\"test\">\n<h2>The winner on the test set</h2>",
             f"<p>The winning configuration was retrained on the training and validation records together "
             f"for {_epochs(report['epochs'])} (where its trial scored best), then evaluated once on the "
             f"{test['n_records']} test records that no trial saw. These are the numbers to quote; the "
             f"validation scores above picked the winner, so they flatter it.</p>"]
    parts.append(_plot("test-metrics", "Test metrics with 95 % intervals", _test_metrics_figure(report),
                       "Each dot is a score on the test records, with its 95 % bootstrap interval (the range "
                       "the score would likely fall in on another test set of the same size: wide intervals "
                       "mean few test records). Hollow diamonds are the same metric on validation data at the "
                       "winning trial's best epoch; test well below validation suggests the search overfitted "
                       "its validation data."))
    parts.append(_metrics_table(test, report.get("validation") or {}))
    parts.append(_plot("per-class", "Per class", _per_class_figure(test),
                       "Precision: of the records predicted as this class, the share that were. Recall: of "
                       "the records of this class, the share found. F1 combines the two. n is how many test "
                       "records the class has; a class with few records has noisy figures."))
    parts.append(_plot("confusion", "Confusion matrix", _confusion_figure(test["confusion_matrix"], classes),
                       "Rows are the true classes, columns the predicted ones; each cell gives the number of "
                       "test records and that number as a share of its row (the colour). The diagonal is "
                       "what was classified right; off the diagonal, which classes are mistaken for which."))
    parts.append(_plot("refit-curves", "Training curves of the winning configuration",
                       _winner_curves_figure(histories.get(best.trial_id), best.metric, int(report["epochs"])),
                       f"The winning trial's losses (left axis) and {best.metric} (right axis) by epoch during "
                       f"the search. The refit trained the same configuration for the epochs up to the dashed "
                       f"line, on training + validation records; its own training loss is in "
                       f"training_curves.png beside this file."))
    # The trial's own values (report.json's config also lists every other part's defaults, e.g. a
    # MiniRocket option beside a CNN), with the epochs the refit trained.
    config = {**best.config, "epochs": report["epochs"]}
    rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in config.items())
    parts.append(f"<h3>The winning configuration</h3>\n<table class=\"facts config\">\n{rows}\n</table>\n"
                 f"<p class=\"caption\">What the refit trained: the winning trial's values and the refit's "
                 f"epoch count; every other setting is the default. <code>ecg-tune train --config "
                 f"best_config.json</code> retrains it; the trained model is in <code>model/</code>.</p>")
    parts.append("</section>")
    return "\n".join(parts)




def _test_metrics_figure(report: dict[str, Any]) -> Figure:
    import plotly.graph_objects as go

    test, validation = report["test"], report.get("validation") or {}
    names = [k for k in HEADLINE_METRICS if k in test]
    values = [float(test[k]) for k in names]
    intervals = [test["ci95"].get(k) for k in names]
    figure = go.Figure(go.Scatter(
        x=values, y=names, mode="markers", name="test", marker={"size": 12, "color": "#1f77b4"},
        error_x={"type": "data", "symmetric": False,
                 "array": [(ci[1] - v) if ci else 0 for v, ci in zip(values, intervals, strict=True)],
                 "arrayminus": [(v - ci[0]) if ci else 0 for v, ci in zip(values, intervals, strict=True)]},
        hovertemplate="%{y} on test: %{x:.3f}<extra></extra>"))
    shown = [(k, validation[f"val_{k}"]) for k in names if validation.get(f"val_{k}") is not None]
    if shown:
        figure.add_trace(go.Scatter(
            x=[v for _, v in shown], y=[k for k, _ in shown], mode="markers", name="validation (best epoch)",
            marker={"symbol": "diamond-open", "size": 12, "color": "#ff7f0e", "line": {"width": 2}},
            hovertemplate="%{y} on validation: %{x:.3f}<extra></extra>"))
    figure.update_layout(xaxis={"range": [0, 1.02], "title": "score (1 is perfect)"}, height=110 + 55 * len(names),
                         yaxis={"autorange": "reversed"}, legend={"orientation": "h", "y": -0.35})
    return figure


def _metrics_table(test: dict[str, Any], validation: dict[str, Any]) -> str:
    rows = []
    for name in (k for k in HEADLINE_METRICS if k in test):
        ci = test["ci95"].get(name)
        val = validation.get(f"val_{name}")
        rows.append(f"<tr><th>{_e(name)}</th><td>{test[name]:.3f}</td>"
                    f"<td>{f'{ci[0]:.3f} to {ci[1]:.3f}' if ci else ''}</td>"
                    f"<td>{'' if val is None else f'{val:.3f}'}</td></tr>")
    weighted = test.get("weighted") or {}
    for name in ("precision", "recall", "f1"):
        if name in weighted:
            rows.append(f"<tr><th>weighted {name}</th><td>{weighted[name]:.3f}</td><td></td><td></td></tr>")
    return ("<table class=\"numbers\"><thead><tr><th>metric</th><th>test</th><th>95 % interval</th>"
            "<th>validation</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            "<p class=\"caption\">Weighted figures average the classes by their number of test records; "
            "macro F1 gives every class the same weight; the CinC F1 (the PhysioNet/CinC 2017 score) is the "
            "mean F1 of normal rhythm (N), atrial fibrillation (A) and other rhythms (O).</p>")


def _per_class_figure(test: dict[str, Any]) -> Figure:
    import plotly.graph_objects as go

    classes = [str(c) for c in test["classes"]]
    per_class = test["per_class"]
    labels = [f"{c} (n={per_class[c]['support']})" for c in classes]
    figure = go.Figure()
    for measure, colour in (("precision", "#1f77b4"), ("recall", "#ff7f0e"), ("f1", "#2ca02c")):
        values = [float(per_class[c][measure]) for c in classes]
        figure.add_trace(go.Bar(x=labels, y=values, name=measure, marker_color=colour,
                                text=[f"{v:.2f}" for v in values], textposition="outside",
                                hovertemplate="%{x}: " + measure + " %{y:.3f}<extra></extra>"))
    figure.update_layout(barmode="group", yaxis={"range": [0, 1.1], "title": "score"}, xaxis_title="true class",
                         height=400)
    return figure


def _confusion_figure(confusion: list[list[int]], classes: list[str]) -> Figure:
    import plotly.graph_objects as go

    counts = np.asarray(confusion, dtype=float).reshape(len(classes), len(classes))
    totals = counts.sum(axis=1, keepdims=True)
    # A class without test records has an empty row: zeros, not NaN.
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    text = [[f"{int(c)}<br>{s:.0%}" for c, s in zip(row_c, row_s, strict=True)]
            for row_c, row_s in zip(counts, shares, strict=True)]
    figure = go.Figure(go.Heatmap(
        z=shares, x=classes, y=classes, text=text, texttemplate="%{text}", colorscale="Blues", zmin=0, zmax=1,
        colorbar={"title": {"text": "share of row"}},
        hovertemplate="true %{y}, predicted %{x}<br>%{text}<extra></extra>"))
    size = 200 + 70 * len(classes)
    figure.update_layout(xaxis={"title": "predicted class", "type": "category"},
                         yaxis={"title": "true class", "type": "category", "autorange": "reversed"},
                         height=size, width=size + 160)
    return figure


def _winner_curves_figure(history: pd.DataFrame | None, metric: str, epochs: int) -> Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ecg_tune.report import metric_curve

    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for column, colour, dash in (("train_loss", "#1f77b4", "solid"), ("val_loss", "#d62728", "dot")):
        curve = metric_curve(history, column)
        if curve is not None:
            figure.add_trace(go.Scatter(x=curve[0], y=curve[1], name=column, mode="lines+markers",
                                        line={"color": colour, "dash": dash}), secondary_y=False)
    curve = metric_curve(history, metric)
    if curve is not None and metric not in ("train_loss", "val_loss"):
        figure.add_trace(go.Scatter(x=curve[0], y=curve[1], name=metric, mode="lines+markers",
                                    line={"color": "#2ca02c"}), secondary_y=True)
    if not figure.data:
        return _empty_figure("the winning trial's per-epoch results are not available")
    figure.add_vline(x=epochs, line_dash="dash", line_color="#555",
                     annotation_text=f"refit: {_epochs(epochs)}", annotation_position="top left")
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(title_text="loss", secondary_y=False)
    figure.update_yaxes(title_text=metric, secondary_y=True)
    figure.update_layout(height=400, legend={"orientation": "h", "y": -0.2})
    return figure


# pieces -------------------------------------------------------------------------------------

def _plot(anchor: str, title: str, figure: Figure, caption: str) -> str:
    """A titled figure and its plain-language caption; plotly.js is in the page's head."""
    figure.update_layout(template=_template(), margin_t=figure.layout.margin.t or 40)
    div = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{anchor}", config=_PLOT_CONFIG)
    return (f"<h3 id=\"{anchor}\">{_e(title)}</h3>\n<figure>{div}</figure>\n"
            f"<p class=\"caption\">{_e(caption)}</p>")


def _template() -> Any:
    """A small light theme: plotly's named templates embed ~7 kB of settings in every figure."""
    import plotly.graph_objects as go

    axis = {"gridcolor": "#e6e6e6", "zerolinecolor": "#c8c8c8", "linecolor": "#999", "automargin": True}
    return go.layout.Template(layout={
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13, "color": "#222"},
        "paper_bgcolor": "white", "plot_bgcolor": "white", "hovermode": "closest",
        "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"],
        "xaxis": axis, "yaxis": axis})


def _empty_figure(message: str) -> Figure:
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font={"size": 16, "color": "#777"})
    figure.update_layout(xaxis_visible=False, yaxis_visible=False, height=220)
    return figure


def _fmt(value: Any) -> str:
    """A value for people: whole numbers whole, others to 4 significant digits, missing as blank."""
    if value is None or _missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
    return str(value)


def _epochs(count: Any) -> str:
    return f"{count} epoch" + ("" if int(count) == 1 else "s")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 1.2em 1.5em 3em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; }
h2 { margin-top: 2em; border-bottom: 2px solid #ddd; padding-bottom: 0.2em; }
h3 { margin-top: 1.8em; margin-bottom: 0.3em; }
.lede { color: #444; }
table.facts { border-collapse: collapse; margin: 0.8em 0; }
table.facts th { text-align: left; vertical-align: top; padding: 0.25em 1.2em 0.25em 0; color: #555;
                 white-space: nowrap; font-weight: 600; }
table.facts td { padding: 0.25em 0; }
table.config td, table.config th { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.92em; }
nav { margin: 1em 0; font-size: 0.95em; }
figure { margin: 0.4em 0; }
.caption { color: #555; font-size: 0.93em; max-width: 60em; margin-top: 0.2em; }
.note { color: #8a5a00; background: #fff8e6; padding: 0.5em 0.8em; border-left: 3px solid #f0b400; }
.scroll { overflow-x: auto; max-height: 38em; overflow-y: auto; border: 1px solid #ddd; }
table.trials, table.numbers { border-collapse: collapse; font-size: 0.86em; }
table.trials th, table.trials td, table.numbers th, table.numbers td { padding: 0.25em 0.6em;
      border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
table.trials th { position: sticky; top: 0; background: #f0f0f0; cursor: pointer; user-select: none; }
table.trials th:hover { background: #e2e8f0; }
table.trials th[data-order="asc"]::after { content: " \\25B2"; }
table.trials th[data-order="desc"]::after { content: " \\25BC"; }
table.trials td:nth-child(-n+2), table.numbers th { text-align: left; }
tr.winner td { background: #fdecea; font-weight: 600; }
code { background: #f3f3f3; padding: 0 0.25em; border-radius: 3px; }
"""

# Sorting the trial table: a click on a header sorts by its column (numbers as numbers unless the
# header says data-text, blanks last), a second click reverses. The cells' data-value holds the
# raw value.
_SORT_JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var headers = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(headers, function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.dataset.order !== "asc", asText = Boolean(th.dataset.text);
      Array.prototype.forEach.call(headers, function (other) { delete other.dataset.order; });
      th.dataset.order = ascending ? "asc" : "desc";
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var text = row.cells[column].dataset.value;
        var number = Number(text);
        return text === "" ? null : (isNaN(number) || asText ? text.toLowerCase() : number);
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        if (typeof x !== typeof y) { x = String(x); y = String(y); }
        var order = x < y ? -1 : (x > y ? 1 : 0);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
