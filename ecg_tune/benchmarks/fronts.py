"""Finished searches' accuracy-against-cost fronts side by side (`benchmark fronts --runs A B ...`).

Owns the comparison of several run folders on one box: per run, its trials, the epochs they
trained, the size of its front over the metric and `cost`, the area that front dominates
(reporting/pareto.py's `hypervolume`, in log2 cost and metric) and what each halving of the cost
costs (`halvings`). The box is shared, so the areas compare: from the worst metric any run's
trials reached (or `floor`) to the largest cost any run measured (or `ceiling`). It reads the
folders only; nothing is trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecg_tune.reporting.pareto import LATENCY, halvings, hypervolume, objective_direction, pareto_front
from ecg_tune.runs import RunFolder


def compare_fronts(runs: Sequence[Path], cost: str = LATENCY, floor: float | None = None,
                   ceiling: float | None = None) -> dict[str, Any]:
    """The fronts of `runs` (finished search folders, the same metric) over their metric and `cost`."""
    folders = [RunFolder(path) for path in runs]
    metric = folders[0].best().metric
    fronts = [pareto_front(run.trial_table(), metric, [metric, cost]) for run in folders]
    values = [f.table[[metric, cost]].dropna() for f in fronts if cost in f.table and metric in f.table]
    if floor is None:
        pooled = np.concatenate([v[metric].to_numpy(float) for v in values]) if values else np.zeros(1)
        floor = float(pooled.min() if objective_direction(metric) else pooled.max())
    if ceiling is None:
        ceiling = float(max((v[cost].max() for v in values if len(v)), default=1.0)) * 1.0001
    found = []
    for run, front in zip(folders, fronts, strict=True):
        epochs = run.trial_table().info.get("epochs")
        ladder = halvings(front, cost)
        found.append({"run": str(run.path), "trials": len(front.table),
                      "epochs": int(np.nansum(epochs.to_numpy(float))) if epochs is not None else None,
                      "front": int(front.table["on_front"].sum()),
                      "hypervolume": hypervolume(front, cost, floor, ceiling),
                      "halvings": ladder.to_dict(orient="records")})
    return {"metric": metric, "cost": cost, "floor": floor, "ceiling": ceiling, "runs": found}


def table(result: dict[str, Any]) -> str:
    """One row per run: trials, epochs, front size, hypervolume; then each run's halvings."""
    metric, cost = result["metric"], result["cost"]
    lines = [f"box: {metric} above {result['floor']:.4g}, {cost} below {result['ceiling']:.4g} (log2 scale)",
             "| run | trials | epochs | front | hypervolume |", "|---|---:|---:|---:|---:|"]
    for r in result["runs"]:
        lines.append(f"| {Path(r['run']).name} | {r['trials']} | {r['epochs']} | {r['front']} | "
                     f"{r['hypervolume']:.3f} |")
    for r in result["runs"]:
        lines += ["", f"{Path(r['run']).name}: what each halving of {cost} costs",
                  f"| halvings | {cost} at most | trial | {metric} | {cost} | change |",
                  "|---:|---:|---|---:|---:|---:|"]
        lines += [f"| {h['step']} | {h['budget']:.3g} | {h['trial_id']} | {h[metric]:.4f} | {h[cost]:.3g} "
                  f"| {h['change']:+.4f} |" for h in r["halvings"]]
    return "\n".join(lines)
