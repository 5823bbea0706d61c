"""The text `--dry-run` prints for an adapted space: effective values, conditions, start points, grid size."""

from __future__ import annotations

from ecg_tune.search.adapt import AdaptedSpace
from ecg_tune.search.parameters import fmt
from ecg_tune.search.samplers import grid_points


def describe(eff: AdaptedSpace) -> str:
    """Parameters with their effective values and conditions, start points, the grid size."""
    facts = eff.facts
    origin = "shipped, adapted to the data" if eff.space.shipped else "user file, checked against the data"
    lines = [f"Search space '{eff.name}' ({eff.where}; {origin})"]
    if eff.space.description:
        lines += [f"  {line}" for line in eff.space.description.splitlines() if line.strip()]
    lines.append(
        f"Data: {facts.n_records} records, {facts.min_length}..{facts.max_length} samples "
        f"(median {facts.median_length}), classes {', '.join(facts.classes)}"
    )
    lines.append("Parameters (in order; 'when' = exists only if):")
    width = max(len(name) for name in eff.parameters)
    for key, p in eff.parameters.items():
        text = f"  {key:<{width}}  {p.type:<8}  {p.shown()}"
        if p.when:
            text += "   when " + " and ".join(
                f"{k} in ({', '.join(fmt(v) for v in vs)})" if len(vs) > 1 else f"{k} = {fmt(vs[0])}"
                for k, vs in p.when.items()
            )
        if key in eff.notes:
            text += f"   [{eff.notes[key]}]"
        lines.append(text)
    if "input_length" not in eff.parameters:
        lines.append(f"  input_length not searched: the training median ({facts.default_input_length})")
    for number, point in enumerate(eff.start, 1):
        values = ", ".join(f"{k}={fmt(v)}" for k, v in point.items())
        lines.append(f"Start point {number} (runs first; keys left out are sampled): {values}")
    # The settings, with the command line's overrides, are the plan's to say (search/plan.py).
    if eff.is_grid:
        rows, dropped = grid_points(eff)
        extra = (f" ({dropped} duplicate configs removed: limited options capped for this data's length)"
                 if dropped else "")
        lines.append(f"Grid: {len(rows)} configs, each run once{extra}")
    return "\n".join(lines)
