"""The page's plotly figures, one builder each, drawn from analysis.py's and pareto.py's data.

Owns how report.html's figures look: the search's progress, the learning curves, the importance
bars, the parallel coordinates, the slices, the Pareto plots (the metric against a cost), and the
test report's metrics, per-class scores, confusion matrix and the winner's curves; plus the page's
light theme (`template`) and the placeholder for a figure without data (`empty_figure`). No
figure reads a file or works a number out of the trials itself: it is handed `Progress`,
`Curve`s, `Parameter`s, scores, `Importances`, a `ParetoFront` or report.json's content. plotly
is imported inside the builders: it costs import time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ecg_tune.reporting.analysis import (
    NOT_APPLICABLE,
    Curve,
    Parameter,
    Progress,
    epochs_text,
    fmt,
    metric_curve,
)
from ecg_tune.reporting.importance import Importances
from ecg_tune.reporting.pareto import CONFIG_KEYS, LATENCY, PARAMS, ParetoFront
from ecg_tune.training.metrics import HEADLINE_METRICS, direction

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

BEST_COLOUR = "#d62728"
PARALLEL_AXES = 10  # parameters with an axis in the parallel-coordinates view, by importance


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------

def progress_figure(progress: Progress, metric: str, winner: str) -> Figure:
    """Every reported value and the running best, against seconds since the search started (or,
    without times, against trial number with each trial's best)."""
    import plotly.graph_objects as go

    if len(progress.x) == 0:
        return empty_figure("no trial reported " + metric)
    if progress.timed:
        x_label, unit, dots = "seconds since the search started", " s", "a trial's epoch"
    else:
        x_label, unit, dots = "trial number", "", "a trial's best epoch"
    figure = go.Figure()
    others = [r for r in progress.reports if r.trial != winner]
    mine = [r for r in progress.reports if r.trial == winner]
    for chosen, name, colour, size in ((others, dots, "rgba(110,110,110,0.55)", 6),
                                       (mine, f"winning trial {winner}", BEST_COLOUR, 8)):
        if chosen:
            figure.add_trace(go.Scatter(
                x=[r.x for r in chosen], y=[r.value for r in chosen], mode="markers", name=name,
                marker={"color": colour, "size": size},
                text=[f"trial {r.trial}" + (f", epoch {r.epoch}" if r.epoch is not None else "") for r in chosen],
                hovertemplate="%{text}<br>" + metric + " %{y:.4f}<br>at %{x:.1f}" + unit + "<extra></extra>"))
    figure.add_trace(go.Scatter(x=progress.x, y=progress.best, mode="lines",
                                line={"shape": "hv", "width": 3, "color": "#1f77b4"},
                                name=f"best so far ({progress.best[-1]:.4f})",
                                hovertemplate="best so far %{y:.4f}<extra></extra>"))
    figure.update_layout(xaxis_title=x_label, yaxis_title=metric, height=430)
    return figure


def curves_figure(curves: list[tuple[str, Curve]], metric: str, winner: str) -> Figure:
    """Every trial's learning curve (`analysis.learning_curves`), the winner's in red."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for trial_id, curve in curves:
        is_winner = trial_id == winner
        figure.add_trace(go.Scatter(
            x=curve.epochs, y=curve.values, mode="lines+markers", name=f"trial {trial_id}", showlegend=is_winner,
            line={"color": BEST_COLOUR if is_winner else "rgba(110,110,110,0.45)", "width": 3 if is_winner else 1},
            marker={"size": 5 if is_winner else 3},
            hovertemplate=f"trial {trial_id}<br>epoch %{{x}}<br>{metric} %{{y:.4f}}<extra></extra>"))
    if not figure.data:
        return empty_figure("no per-epoch results")
    figure.update_layout(xaxis_title="epoch", yaxis_title=metric, height=400)
    return figure


def importance_figure(importances: Importances) -> Figure:
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


def parallel_figure(scores: pd.Series, parameters: list[Parameter], metric: str) -> Figure:
    """One line per scored trial across `parameters`' axes, ending at its score (`scores`: one per
    trial row, NaN where none)."""
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
    text = [fmt(int(round(v)) if parameter.kind == "int" else v) for v in shown]
    na = low - 0.15 * ((high - low) or 1.0)  # a slot below the range for trials without it
    coded = [na if v is None else (math.log10(v) if parameter.log else float(v)) for v in values]
    if any(v is None for v in values):
        ticks, text = [na, *ticks], [NOT_APPLICABLE, *text]
    return {"label": parameter.name + (" (log)" if parameter.log else ""), "values": coded,
            "tickvals": ticks, "ticktext": text,
            "range": [min(coded + [low]), high]}


def slices_figure(scores: pd.Series, parameters: list[Parameter], metric: str, winner: str) -> Figure:
    """One panel per parameter: each scored trial at its value and its score (`scores`: one per
    trial row, index: trial ids)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    columns = min(3, len(parameters))
    rows = math.ceil(len(parameters) / columns)
    titles = [p.name + (f" (set in {p.defined} of {len(p.values)})" if p.conditional else "") for p in parameters]
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=titles, horizontal_spacing=0.08,
                           vertical_spacing=min(0.12, 0.5 / rows))
    ids = [str(i) for i in scores.index]
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
        colours = [BEST_COLOUR if ids[i] == winner else "#1f77b4" for i in keep]
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


# --------------------------------------------------------------------------------------------
# The Pareto front
# --------------------------------------------------------------------------------------------

COST_LABELS = {LATENCY: "latency per record (ms, batch 1, one thread)", PARAMS: "parameters"}


def pareto_figure(front: ParetoFront, cost: str, winner: str) -> Figure:
    """The metric against one cost (`latency_ms` or `n_params`, log x) for every trial with both:
    feasible trials as dots (those on this 2-D front larger, joined by the front's step line),
    infeasible ones as crosses, the winner ringed."""
    import plotly.graph_objects as go

    metric, table = front.metric, front.table
    flag = f"on_front_{cost}"
    shown = table[table[metric].notna() & table[cost].notna()] if cost in table and metric in table else table[:0]
    if shown.empty:
        return empty_figure(f"no trial reported both {metric} and {cost}")
    on_front = shown[flag] if flag in shown else pd.Series(False, index=shown.index)
    extra = [c for c in CONFIG_KEYS if c in shown]
    groups = ((shown[shown["feasible"] & ~on_front], "feasible", "circle", "rgba(110,110,110,0.6)", 7),
              (shown[shown["feasible"] & on_front], "on the front", "circle", "#1f77b4", 10),
              (shown[~shown["feasible"]], "infeasible (broke a constraint)", "x", "#ff7f0e", 8))
    figure = go.Figure()
    for rows, name, symbol, colour, size in groups:
        if rows.empty:
            continue
        text = [f"trial {t}" + "".join(f"<br>{k} {fmt(row[k])}" for k in extra) + ("<br>the winner" if t == winner
                                                                                     else "")
                for t, (_, row) in zip(rows["trial_id"], rows.iterrows(), strict=True)]
        figure.add_trace(go.Scatter(
            x=rows[cost], y=rows[metric], mode="markers", name=name, text=text,
            marker={"symbol": symbol, "color": colour, "size": size},
            hovertemplate="%{text}<br>" + cost + " %{x:.4g}<br>" + metric + " %{y:.4f}<extra></extra>"))
    steps = shown[shown["feasible"] & on_front].sort_values([cost, metric], kind="stable")
    if len(steps) > 1:  # each step: the best metric up to that cost, until a costlier trial beats it
        figure.add_trace(go.Scatter(x=steps[cost], y=steps[metric], mode="lines", name="Pareto front",
                                    line={"shape": "hv", "width": 2, "color": "#1f77b4"}, hoverinfo="skip"))
    best = shown[shown["trial_id"] == winner]
    if not best.empty:  # a ring of its own, so that no group's legend entry wears it
        figure.add_trace(go.Scatter(x=best[cost], y=best[metric], mode="markers", name=f"the winner ({winner})",
                                    marker={"symbol": "circle-open", "size": 17, "color": BEST_COLOUR,
                                            "line": {"width": 2}}, hoverinfo="skip"))
    positive = bool((shown[cost] > 0).all())  # a log axis needs positive values
    figure.update_layout(xaxis={"title": COST_LABELS.get(cost, cost) + (" (log scale)" if positive else ""),
                                "type": "log" if positive else "linear"},
                         yaxis_title=metric, height=420, legend={"orientation": "h", "y": -0.25})
    return figure


# --------------------------------------------------------------------------------------------
# The test report
# --------------------------------------------------------------------------------------------

def test_metrics_figure(report: dict[str, Any]) -> Figure:
    """report.json's headline test metrics with their intervals, beside the validation scores."""
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


# Not a test: pytest would collect a function named test_* imported into a test module.
test_metrics_figure.__test__ = False  # type: ignore[attr-defined]  # a plain function attribute pytest reads


def per_class_figure(test: dict[str, Any]) -> Figure:
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


def confusion_figure(confusion: list[list[int]], classes: list[str]) -> Figure:
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


def winner_curves_figure(history: pd.DataFrame | None, metric: str, epochs: int) -> Figure:
    """The winning trial's losses and `metric` by epoch, with the refit's epoch count marked."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for column, colour, dash in (("train_loss", "#1f77b4", "solid"), ("val_loss", "#d62728", "dot")):
        curve = metric_curve(history, column)
        if curve is not None:
            figure.add_trace(go.Scatter(x=curve.epochs, y=curve.values, name=column, mode="lines+markers",
                                        line={"color": colour, "dash": dash}), secondary_y=False)
    curve = metric_curve(history, metric)
    if curve is not None and metric not in ("train_loss", "val_loss"):
        figure.add_trace(go.Scatter(x=curve.epochs, y=curve.values, name=metric, mode="lines+markers",
                                    line={"color": "#2ca02c"}), secondary_y=True)
    if not figure.data:
        return empty_figure("the winning trial's per-epoch results are not available")
    figure.add_vline(x=epochs, line_dash="dash", line_color="#555",
                     annotation_text=f"refit: {epochs_text(epochs)}", annotation_position="top left")
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(title_text="loss", secondary_y=False)
    figure.update_yaxes(title_text=metric, secondary_y=True)
    figure.update_layout(height=400, legend={"orientation": "h", "y": -0.2})
    return figure


# --------------------------------------------------------------------------------------------
# Looks
# --------------------------------------------------------------------------------------------

def template() -> Any:
    """A small light theme: plotly's named templates embed ~7 kB of settings in every figure."""
    import plotly.graph_objects as go

    axis = {"gridcolor": "#e6e6e6", "zerolinecolor": "#c8c8c8", "linecolor": "#999", "automargin": True}
    return go.layout.Template(layout={
        "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13, "color": "#222"},
        "paper_bgcolor": "white", "plot_bgcolor": "white", "hovermode": "closest",
        "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"],
        "xaxis": axis, "yaxis": axis})


def empty_figure(message: str) -> Figure:
    import plotly.graph_objects as go

    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font={"size": 16, "color": "#777"})
    figure.update_layout(xaxis_visible=False, yaxis_visible=False, height=220)
    return figure
