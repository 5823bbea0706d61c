"""ASHA whose rungs rank trials by a key of their own (`rung_metric`), apart from the search's metric.

Tune hands the search's metric to every scheduler; ASHA then cuts each rung on it. On data where
every network predicts the majority class for its first epochs (CinC 2017: a CNN's CinC F1 sits
at 0.24-0.25 for two to six epochs), the first rungs compare majority-class predictors and their
cuts are noise. A threshold-free score such as `val_auroc` moves as soon as a model ranks the
records better, so a rung can rank by it while the searcher (TPE), the best trial and the export
keep ranking by the metric the user asked for (docs/benchmarks.md, "early rungs", measures it).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler


class RungASHA(ASHAScheduler):
    """Ray's ASHA, built with its own `metric` and `mode`, which keeps them when Tune passes the
    search's (`ASHAScheduler` would refuse the pair and Tune raise)."""

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True
