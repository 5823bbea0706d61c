"""report.html's Pareto section: the metric against latency and against parameters (figures.py's
`pareto_figure`, feasible and infeasible trials marked apart, the front as a step line) and the
front's table (pareto.csv's rows); for trials without cost columns (runs from before them) a
one-line note instead. The front itself is pareto.py's.
"""

from __future__ import annotations

import pandas as pd

from ecg_tune.reporting import figures
from ecg_tune.reporting.markup import escape, plot_block, sortable_table
from ecg_tune.reporting.pareto import LATENCY, PARAMS, ParetoFront, halvings


def pareto_section(front: ParetoFront, rows: pd.DataFrame | None, winner: str) -> str:
    """The section (`rows`: pareto.csv as written; None: the front's own rows)."""
    if not front.has_costs:
        return (f"<p class=\"note\" id=\"pareto\">Pareto front not shown: the trials report no cost ({LATENCY}, "
                f"{PARAMS}); runs searched before the cost keys have none.</p>")
    metric = front.metric
    parts = ["<section id=\"pareto\">\n<h2>Accuracy against cost: the Pareto front</h2>"]
    for cost, anchor, what in ((LATENCY, "pareto-latency", "latency"), (PARAMS, "pareto-params", "parameters")):
        if cost in front.costs:
            parts.append(plot_block(
                anchor, f"{metric} against {what}", figures.pareto_figure(front, cost, winner),
                f"Each dot is a trial at its {cost} (across) and its {metric} (up). The blue dots are the trials no "
                f"other feasible trial beats in both, joined by the front's steps: along it, a better score costs "
                f"more {what}. Crosses broke one of the run's constraints (--max-params, --max-macs, "
                f"--max-latency-ms) and are never on the front; the ringed dot is the search's winner."))
    rows = front.csv_rows() if rows is None else rows
    over = ", ".join(f"{key} ({'higher' if up else 'lower'} is better)"
                     for key, up in zip(front.objectives, front.maximise, strict=True)) or "no objective"
    notes = "".join(f" {note[0].upper()}{note[1:]}." for note in front.notes)
    table = sortable_table([str(c) for c in rows.columns], [row.tolist() for _, row in rows.iterrows()],
                           "numbers pareto", marked=[str(t) == winner for t in rows["trial_id"]])
    caption = (f"The feasible trials that no other feasible trial beats in every objective: {over}; the best "
               f"{metric} first. Any of them can be delivered instead of the winner: ecg-tune refit --run "
               f"<this folder> --trial <trial_id> retrains that trial and tests it once.{notes}")
    parts.append(f"<h3 id=\"pareto-table\">The front (pareto.csv)</h3>\n{table}\n"
                 f"<p class=\"caption\">{escape(caption)}</p>")
    ladder = halvings(front, LATENCY)
    if len(ladder) > 1:
        cells = [[r.trial_id, int(r.step), f"{r.budget:.3g}", f"{r[metric]:.4f}", f"{r[LATENCY]:.3g}",
                  f"{r.change:+.4f}"] for _, r in ladder.iterrows()]
        parts.append("<h3 id=\"pareto-halvings\">What each halving of latency costs</h3>\n"
                     + sortable_table(["trial_id", "halvings", f"{LATENCY} at most", metric, LATENCY,
                                       f"{metric} change"], cells, "numbers")
                     + f"\n<p class=\"caption\">{escape(HALVINGS_CAPTION.format(metric=metric))}</p>")
    parts.append("</section>")
    return "\n".join(parts)


HALVINGS_CAPTION = ("From the feasible trial with the best {metric}: the best feasible trial within half its latency, "
                    "a quarter, and so on, with what it gives up in {metric}. Validation figures of the search, "
                    "not test figures.")
