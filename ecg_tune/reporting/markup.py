"""report.html's HTML pieces that every section shares: escaping, a titled plot with its caption,
a sortable table (static/sort.js sorts it by a click on a header; cells carry their raw value).

page.py puts the sections together; pareto_section.py builds the Pareto section with these.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ecg_tune.reporting import figures
from ecg_tune.reporting.analysis import fmt, missing

if TYPE_CHECKING:
    from plotly.graph_objects import Figure

PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def plot_block(anchor: str, title: str, figure: Figure, caption: str) -> str:
    """A titled figure and its plain-language caption; plotly.js is in the page's head."""
    figure.update_layout(template=figures.template(), margin_t=figure.layout.margin.t or 40)
    div = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{anchor}", config=PLOT_CONFIG)
    return (f"<h3 id=\"{anchor}\">{escape(title)}</h3>\n<figure>{div}</figure>\n"
            f"<p class=\"caption\">{escape(caption)}</p>")


def sortable_table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str, *, text_columns: int = 1,
                   marked: Sequence[bool] = ()) -> str:
    """A table static/sort.js sorts: the first `text_columns` columns as text (trial ids such as
    "49975e10" read as numbers), the others as numbers; a row whose `marked` is true is the winner's."""
    as_text, winner = ' data-text="1"', ' class="winner"'
    head = "".join(f"<th title=\"sort by {escape(h)}\"{as_text if i < text_columns else ''}>{escape(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cells = "".join(f"<td data-value=\"{escape('' if missing(v) else v)}\">{escape(fmt(v))}</td>" for v in row)
        body.append(f"<tr{winner if n < len(marked) and marked[n] else ''}>{cells}</tr>")
    return (f"<div class=\"scroll\"><table class=\"sortable {css}\">\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody></table></div>")
