"""report.html: a run folder as one self-contained, interactive page.

Owns the page a search leaves beside its results (written after the search's exports, rewritten
by the refit, rebuilt by `ecg-tune report` for any finished run): its sections, tables and words.
The page has:

* a header saying what was searched (data, the parameters that varied, budget, trials, the metric
  and its direction) and when;
* the search: the best score so far over time with every reported epoch, every trial's learning
  curve, parameter importances, a parallel-coordinates view and per-parameter slices of the
  trials' configurations against their scores, and a table of trials sortable by any column;
* the Pareto front (pareto.py): the metric against latency and against parameters, feasible and
  infeasible trials marked apart, the front as a step line, and pareto.csv's table; a one-line
  note instead for trials without cost columns (runs from before them);
* once refitted, the test report of report.json: metrics with their 95 % intervals beside the
  validation scores, per-class figures, the confusion matrix, the refitted config's training
  curves and the winning config; when an ensemble was delivered, its members (weight, validation,
  test) beside the single best trial's test figures; when a trial was chosen by hand (`ecg-tune
  refit --trial`), that trial's.

Everything is read through `runs.RunFolder` and worked out by analysis.py and importance.py; the
figures are figures.py's, whose JavaScript (plotly.js) is embedded once in the page's head, so the
file opens offline, with nothing loaded from a URL. The style sheet and the table-sorting script
are the package's static/report.css and static/sort.js (a click on a header sorts by its column:
numbers as numbers unless the header says data-text, blanks last; a second click reverses; cells
carry their raw value in data-value).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecg_tune.errors import EcgTuneError
from ecg_tune.reporting import figures
from ecg_tune.reporting.analysis import (
    NOT_APPLICABLE,
    Parameter,
    declared_parameters,
    epochs_text,
    fmt,
    learning_curves,
    missing,
    progress,
    search_clock,
    search_parameters,
    trial_scores,
)
from ecg_tune.reporting.evaluation import headline
from ecg_tune.reporting.importance import Importances, parameter_importances
from ecg_tune.reporting.markup import escape, plot_block
from ecg_tune.reporting.pareto import run_front
from ecg_tune.reporting.pareto_section import pareto_section
from ecg_tune.runs import BestConfig, RunFolder, TrialTable
from ecg_tune.training.metrics import HEADLINE_METRICS, direction


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
    when the caller has read them already). A folder without best_config.json is an EcgTuneError.
    A run without pareto.csv (from before it) gets it here."""
    run.best()  # not a finished search: say so before the lock creates anything in the folder
    with run.lock():  # not while a search or refit writes the folder
        if run.pareto() is None:
            run.write_pareto(run_front(run).csv_rows())
        page, importances = build_page(run, histories)
        path = run.write_html_report(page)
    return HtmlReport(path=path, importances=importances, size=path.stat().st_size)


def build_page(run: RunFolder, histories: dict[str, pd.DataFrame] | None = None) -> tuple[str, Importances]:
    """The page's HTML and the importances in it."""
    from plotly.offline import get_plotlyjs

    best = run.best()
    table = run.trial_table()
    history_note = None
    if histories is None:
        try:
            histories = run.histories()
        except EcgTuneError as exc:  # an unreachable storage still leaves the tables to show
            histories, history_note = {}, f"the trials' per-epoch results could not be read: {exc}"
    report = _read_report(run)
    metric = best.metric
    try:
        declared = declared_parameters(run.space_record(), where=str(run.space_path))
    except EcgTuneError as exc:
        # A report of what the search found still has its worth without the space (a damaged file,
        # or one a later version no longer reads): kinds are guessed, as for older runs, and said so.
        declared = {}
        print(f"report: {exc}; parameter kinds and scales guessed from the trials' values", file=sys.stderr)
    scores = trial_scores(table, metric)
    parameters, constants = search_parameters(table.config, declared)
    importances = parameter_importances(table, metric, declared)
    header = _header(run, best, table, parameters, constants, histories, report)  # in the space's order
    # The views list the parameters by importance, the most important first.
    order = {name: i for i, name in enumerate(importances.values)}
    parameters.sort(key=lambda p: order.get(p.name, len(order)))

    sections = [header]
    sections.append(_search_section(best, table, scores, parameters, histories, importances, history_note))
    sections.append(pareto_section(run_front(run), run.pareto(), best.trial_id))
    if report is not None:
        sections.append(_test_section(best, report, histories))
    title = f"ECG search report: {run.path.name}"
    page = (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<style>\n{_static('report.css')}</style>\n"
            # plotly.js itself, inline (what include_plotlyjs=True embeds), once for every figure.
            f"<script>window.PlotlyConfig = {{MathJaxConfig: 'local'}};</script>\n"
            f"<script>{get_plotlyjs()}</script>\n</head>\n<body>\n<main>\n"
            + "\n".join(sections)
            + f"\n</main>\n<script>\n{_static('sort.js')}</script>\n</body>\n</html>\n")
    return page, importances


def _static(name: str) -> str:
    """One of the package's static files (installed as package data)."""
    return (resources.files("ecg_tune.reporting") / "static" / name).read_text(encoding="utf-8")


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

_STATUS_WORDS = {"stopped": "stopped early by the scheduler", "errored": "failed"}


def _header(run: RunFolder, best: BestConfig, table: TrialTable, parameters: list[Parameter],
            constants: dict[str, Any], histories: dict[str, pd.DataFrame], report: dict[str, Any] | None) -> str:
    metric = best.metric
    better = "lower is better" if direction(metric) == "min" else "higher is better"
    statuses = table.info["status"].value_counts().to_dict() if "status" in table.info.columns else {}
    counts = ", ".join(f"{n} {_STATUS_WORDS.get(s, s)}" for s, n in statuses.items())
    epochs_trained = int(pd.to_numeric(table.info.get("epochs", pd.Series(dtype=float)), errors="coerce").sum())
    start, end = search_clock(histories, metric) or (None, None)
    validation = (f"{best.cv}-fold cross-validation over the train + validation records (each score is "
                  f"the mean of the folds)" if best.cv > 1 else "the split's validation records")
    rows = [
        ("Data", _e(best.data)),
        ("Ranked by", f"<code>{_e(metric)}</code> ({better}), each trial scored at its best epoch, on {validation}"),
        ("Searched", "<br>".join(_e(p.describe()) for p in parameters) or "nothing varied"),
        ("Held constant", _e(", ".join(f"{k} = {fmt(v)}" + _where_set(table, k) for k, v in constants.items()))
         or "none"),
        ("Budget", _e(f"up to {best.config.get('epochs', '?')} epochs per trial; {len(table)} trials "
                      f"({counts or 'none recorded'}); {epochs_trained} epochs trained in all"
                      + (f"; {_duration(end - start)} from the first trial's start to the last report"
                         if start is not None and end is not None else ""))),
        ("When", _e(_when(start, run))),
        ("Best trial", _e(f"{best.trial_id}: {metric} {best.score:.4f}"
                          + (f" (± {best.spread:.4f} over folds)" if best.spread is not None else "")
                          + f" at epoch {best.epoch}")),
        ("Its configuration", _e(", ".join(f"{k} = {fmt(v)}" for k, v in best.config.items()))),
    ]
    if report is not None:
        test = report["test"]
        rows.append(("Test set", _e(f"{headline(test, '; ')} on {test['n_records']} held-out records, "
                                    f"{_delivered(report)}") + " (<a href=\"#test\">details</a>)"))
    else:
        rows.append(("Test set", "not evaluated yet: <code>ecg-tune refit --run "
                                 f"{_e(str(run.path))}</code> retrains the best config and tests it once"))
    facts = "\n".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    links = ['<a href="#progress">progress</a>', '<a href="#importance">importances</a>',
             '<a href="#parallel">parallel coordinates</a>', '<a href="#slices">slices</a>',
             '<a href="#trials">trials</a>', '<a href="#pareto">Pareto front</a>'] + (
                 ['<a href="#test">test report</a>'] if report is not None else [])
    return (f"<header>\n<h1>Hyperparameter search: {_e(run.path.name)}</h1>\n"
            f"<p class=\"lede\">A Ray Tune search for the best ECG classifier configuration: each trial "
            f"trained one configuration and was scored on validation data after every epoch. This page "
            f"shows how the search went, which settings mattered"
            + (", and how the winner did on test records it never saw" if report is not None else "")
            + f". Written {_e(time.strftime('%Y-%m-%d %H:%M %Z'))} from {_e(str(run.path))}.</p>\n"
            f"<table class=\"facts\">\n{facts}\n</table>\n<nav>{' · '.join(links)}</nav>\n</header>")


def _delivered(report: dict[str, Any]) -> str:
    """How the delivered model was refitted: one trial for its epochs, or an ensemble's members."""
    if report.get("chosen"):
        return f"trial {report['chosen']['trial_id']} (chosen by hand) refitted for {epochs_text(report['epochs'])}"
    members = (report.get("ensemble") or {}).get("members") or [{"epochs": report["epochs"]}]
    if len(members) > 1:
        return f"an ensemble of {len(members)} trials, each refitted for its own epochs"
    trial = f"trial {members[0]['trial_id']} (chosen after the search) " if "trial_id" in members[0] else ""
    return f"{trial}refitted for {epochs_text(members[0]['epochs'])}"


def _where_set(table: TrialTable, name: str) -> str:
    """` (in 4 of 9 trials)` for a parameter some configurations do not use, else nothing."""
    given = int(table.config[name].notna().sum())
    return f" (in {given} of {len(table)} trials)" if given < len(table) else ""


def _when(start: float | None, run: RunFolder) -> str:
    if start is not None:
        return "started " + time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(start))
    # Without Tune's per-epoch results, the best config's file time says when the search ended.
    written = run.best_config_path.stat().st_mtime
    return "results written " + time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(written))


# search -------------------------------------------------------------------------------------

def _search_section(best: BestConfig, table: TrialTable, scores: pd.Series, parameters: list[Parameter],
                    histories: dict[str, pd.DataFrame], importances: Importances, history_note: str | None) -> str:
    metric = best.metric
    scored = int(scores.notna().sum())
    better = "lowest" if direction(metric) == "min" else "highest"
    parts = ["<section id=\"search\">\n<h2>The search</h2>"]
    if history_note:
        parts.append(f"<p class=\"note\">{_e(history_note)}</p>")

    found = progress(table, histories, metric)
    dots = (f"Every grey dot is one epoch of one trial: the {metric} it scored on validation data then, "
            f"against the seconds since the search started." if found.timed else
            f"Every grey dot is one trial's best {metric} (the per-epoch results are not available), in the "
            f"order the trials were created.")
    parts.append(_plot("progress", "Progress: best score so far", figures.progress_figure(found, metric, best.trial_id),
                       f"{dots} The blue line is the {better} score found so far, so it steps only when a "
                       f"trial beats all before it; where it flattens out, more search time bought little. "
                       f"Red dots are the winning trial. Hover a dot for its trial and epoch."))
    curves = learning_curves(histories, metric, best.trial_id)
    parts.append(_plot("curves", "Learning curves of every trial", figures.curves_figure(curves, metric, best.trial_id),
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
        parts.append(_plot("importance", "Parameter importances", figures.importance_figure(importances), caption))
    else:
        parts.append(f"<h3 id=\"importance\">Parameter importances</h3>\n<p class=\"note\">Not computed: "
                     f"{_e(importances.note or '')}. A longer search (more trials) gives them.</p>")

    if parameters and scored:
        # Looked at on the 14-trial CinC run: 24 axes overlapped their tick labels and read as noise;
        # the most important ones carry the picture, the slices and the table show the rest.
        axes = parameters[:figures.PARALLEL_AXES]
        rest = (f" Only the {figures.PARALLEL_AXES} most important of the {len(parameters)} parameters have an "
                f"axis; the slices and the trial table show all of them."
                if len(parameters) > figures.PARALLEL_AXES else "")
        parts.append(_plot("parallel", "Parallel coordinates: configurations and their scores",
                           figures.parallel_figure(scores, axes, metric),
                           f"Each line is one of the {scored} trials with a score, crossing every axis at its "
                           f"value of that parameter and ending at its score (right axis); the colour is the "
                           f"score too (yellow: best). Axes are ordered by importance, most important on the "
                           f"left. {NOT_APPLICABLE} marks a parameter the trial's configuration does not use "
                           f"(e.g. the wavelet of a trial without a wavelet transform). Drag along an axis to "
                           f"keep only the lines through that range; drag an axis title to reorder.{rest}"))
        parts.append(_plot("slices", "Slices: score against each parameter",
                           figures.slices_figure(scores, parameters, metric, best.trial_id),
                           f"One panel per parameter: each dot is a trial, placed at its value of that "
                           f"parameter (across) and its {metric} (up); the red dot is the winner. A clear "
                           f"trend or a value whose dots all sit high means the parameter mattered on its "
                           f"own; a flat cloud means it did not, or that other parameters hid its effect. "
                           f"Panel titles say in how many trials a conditional parameter was set."))
    else:
        parts.append("<h3 id=\"parallel\">Parallel coordinates</h3>\n<p class=\"note\">No parameter varied, or no "
                     "trial reported a score: nothing to compare.</p><span id=\"slices\"></span>")
    parts.append(_trial_table(table, scores, parameters, metric, best.trial_id))
    parts.append("</section>")
    return "\n".join(parts)


def _trial_table(table: TrialTable, scores: pd.Series, parameters: list[Parameter], metric: str,
                 winner: str) -> str:
    """Every trial as a row, best first; clicking a column header sorts by it (static/sort.js;
    cells carry their raw value for sorting)."""
    if table.empty:
        return "<h3 id=\"trials\">Trials</h3>\n<p class=\"note\">The search recorded no trials.</p>"
    metrics = [c for c in table.best.columns if c != metric]
    header = ["trial", "status", "epochs", "best epoch", f"score: {metric}", *[p.name for p in parameters], *metrics]
    ascending = direction(metric) == "min"
    # Row positions, best first (trials without a score last, in table order).
    order = np.asarray(scores.reset_index(drop=True).sort_values(ascending=ascending, na_position="last",
                                                                 kind="stable").index)
    info = table.info.reindex(columns=["trial_id", "status", "epochs", "best_epoch"])
    body = []
    for position in order:
        # Cell by cell from each column, so that every value keeps its column's type.
        values: list[Any] = [info[c].iloc[position] for c in info.columns] + [scores.iloc[position]]
        values += [p.values[position] for p in parameters]
        values += [table.best[c].iloc[position] for c in metrics]
        cells = []
        for column, value in enumerate(values):
            shown = NOT_APPLICABLE if value is None and 5 <= column < 5 + len(parameters) else fmt(value)
            raw = "" if missing(value) else str(value)
            cells.append(f"<td data-value=\"{_e(raw)}\">{_e(shown)}</td>")
        marker = " class=\"winner\"" if str(values[0]) == winner else ""
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
    members = len((report.get("ensemble") or {}).get("members", []))
    # `ecg-tune refit --trial`: the delivered model is that trial's, not the winner's.
    chosen = report.get("chosen") or {}
    trial_id, trial_config = chosen.get("trial_id", best.trial_id), chosen.get("config") or best.config
    retrained = (f"Trial {_e(trial_id)}, chosen by hand (<code>ecg-tune refit --trial</code>) instead of the search's "
                 f"winner {_e(best.trial_id)}, was retrained on the training and validation records together for "
                 f"{epochs_text(report['epochs'])} (where it scored best), then evaluated once on the " if chosen else
                 f"The delivered model is an ensemble of {members} trials chosen after the search (<a "
                 f"href=\"#ensemble\">below</a>): each was retrained on the training and validation records "
                 f"together for its own epochs, and their probabilities averaged with the weights shown; it was "
                 f"evaluated once on the " if members > 1 else
                 f"The winning configuration was retrained on the training and validation records together "
                 f"for {epochs_text(report['epochs'])} (where its trial scored best), then evaluated once on the ")
    who = "chosen trial" if chosen else "winner"
    parts = [f"<section id=\"test\">\n<h2>The {who} on the test set</h2>", f"<p>{retrained}"
             f"{test['n_records']} test records that no trial saw. These are the numbers to quote; the "
             f"validation scores above picked the winner, so they flatter it.</p>"]
    if "ensemble" in report:
        parts.append(_ensemble_table(report))
    parts.append(_plot("test-metrics", "Test metrics with 95 % intervals", figures.test_metrics_figure(report),
                       "Each dot is a score on the test records, with its 95 % bootstrap interval (the range "
                       "the score would likely fall in on another test set of the same size: wide intervals "
                       "mean few test records). Hollow diamonds are the same metric on validation data at the "
                       "winning trial's best epoch; test well below validation suggests the search overfitted "
                       "its validation data."))
    parts.append(_metrics_table(test, report.get("validation") or {}))
    parts.append(_plot("per-class", "Per class", figures.per_class_figure(test),
                       "Precision: of the records predicted as this class, the share that were. Recall: of "
                       "the records of this class, the share found. F1 combines the two. n is how many test "
                       "records the class has; a class with few records has noisy figures."))
    parts.append(_plot("confusion", "Confusion matrix", figures.confusion_figure(test["confusion_matrix"], classes),
                       "Rows are the true classes, columns the predicted ones; each cell gives the number of "
                       "test records and that number as a share of its row (the colour). The diagonal is "
                       "what was classified right; off the diagonal, which classes are mistaken for which."))
    parts.append(_plot("refit-curves", f"Training curves of the {'chosen' if chosen else 'winning'} configuration",
                       figures.winner_curves_figure(histories.get(trial_id), best.metric, int(report["epochs"])),
                       f"The winning trial's losses (left axis) and {best.metric} (right axis) by epoch during "
                       f"the search. The refit trained the same configuration for the epochs up to the dashed "
                       f"line, on training + validation records; its own training loss is in "
                       f"training_curves.png beside this file."))
    # The trial's own values (report.json's config also lists every other part's defaults, e.g. a
    # MiniRocket option beside a CNN), with the epochs the refit trained.
    config = {**trial_config, "epochs": report["epochs"]}
    rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(fmt(v))}</td></tr>" for k, v in config.items())
    parts.append(f"<h3>The {'chosen' if chosen else 'winning'} configuration</h3>\n"
                 f"<table class=\"facts config\">\n{rows}\n</table>\n"
                 f"<p class=\"caption\">What the refit trained: the winning trial's values and the refit's "
                 f"epoch count; every other setting is the default. <code>ecg-tune train --config "
                 f"best_config.json</code> retrains it; the trained model is in <code>model/</code>.</p>")
    parts.append("</section>")
    return "\n".join(parts)


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


def _ensemble_table(report: dict[str, Any]) -> str:
    """The delivered ensemble, its members and the single best trial: weight, validation, test."""
    ensemble, test = report["ensemble"], report["test"]
    names = [k for k in HEADLINE_METRICS if k in test]
    best = ensemble["single_best"]

    def row(label: str, weight: str, validation: Any, figures: dict[str, Any], epochs: Any) -> str:
        cells = [label, weight, "" if validation is None else f"{validation:.3f}"]
        cells += [f"{figures[k]:.3f}" + (" [{:.3f}, {:.3f}]".format(*figures["ci95"][k]) if k in figures.get("ci95", {})
                                          else "") for k in names if k in figures]
        return "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in [*cells, epochs]) + "</tr>"

    rows = [row("delivered: the ensemble" if len(ensemble["members"]) > 1 else "delivered", "1", None, test, "")]
    for member in ensemble["members"]:
        mark = " (the single best)" if member["trial_id"] == best["trial_id"] else ""
        rows.append(row(f"member {member['trial_id']}{mark}", f"{member['weight']:.2f}", member["validation"],
                        member["test"], member["epochs"]))
    if not best["member"]:
        rows.append(row(f"single best {best['trial_id']} (not a member)", "0", best["validation"], best["test"],
                        best["epochs"]))
    head = "".join(f"<th>{_e(h)}</th>" for h in ["model", "weight", f"validation {ensemble['metric']}",
                                                 *[f"test {k} [95 %]" for k in names], "epochs"])
    figures = "; ".join(f"{k} {fmt(v)}" for k, v in ensemble.get("figures", {}).items())
    caption = (f"What the team added: the delivered model averages its members' probabilities with these weights; "
               f"every member, and the single best trial of the search, was refitted on training + validation "
               f"records for its own epochs and tested on the same records (the same resamples give the "
               f"intervals). How the team was chosen: {ensemble.get('rule') or 'not recorded'}"
               + (f" ({figures})" if figures else "") + ".")
    return (f"<h3 id=\"ensemble\">The ensemble and the single best trial</h3>\n<table class=\"numbers\"><thead>"
            f"<tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>\n"
            f"<p class=\"caption\">{_e(caption)}</p>")


# pieces -------------------------------------------------------------------------------------

_plot, _e = plot_block, escape  # the shared pieces (markup.py), by their names on this page


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
