"""The text `--dry-run` prints for a space on some data: effective values, conditions, settings."""

from __future__ import annotations

from ecg_tune.search.adapt import DataFacts, adapt
from ecg_tune.search.parameters import fmt
from ecg_tune.search.samplers import grid_points
from ecg_tune.search.space import SearchSpace


def describe(space: SearchSpace, facts: DataFacts) -> str:
    """Parameters with their effective values and conditions, the settings, the grid size."""
    eff = adapt(space, facts)
    origin = "shipped, adapted to the data" if eff.shipped else "user file, checked against the data"
    lines = [f"Search space '{eff.name}' ({eff.where}; {origin})"]
    if eff.description:
        lines += [f"  {line}" for line in eff.description.splitlines() if line.strip()]
    lines.append(
        f"Data: {facts.n_records} records, {facts.min_length}..{facts.max_length} samples "
        f"(median {facts.median_length}), classes {', '.join(facts.classes)}"
    )
    lines.append("Parameters (in order; 'when' = exists only if):")
    width = max(len(name) for name in eff.parameters)
    for key, p in eff.parameters.items():
        text = f"  {key:<{width}}  {p.type:<8}  {p.shown()}"  # type: ignore[union-attr]
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
    s = eff.search
    if s.fidelity == "time":
        grace = f"{fmt(s.grace_seconds)} s" if s.grace_seconds else "a 24th of the time budget"
        asha = (f"max_epochs {s.max_epochs} (epochs per trial), ASHA on training time: grace {grace}, "
                f"reduction_factor {fmt(s.reduction_factor)}")
    else:
        asha = (f"max_epochs {s.max_epochs} (epochs per trial, ASHA max_t), grace_period {s.grace_period}, "
                f"reduction_factor {fmt(s.reduction_factor)}")
    if eff.is_grid:
        rows, dropped = grid_points(space, facts)
        extra = (f" ({dropped} duplicate configs removed: limited options capped for this data's length)"
                 if dropped else "")
        lines.append(f"Grid: {len(rows)} configs, each run once{extra}")
        lines.append(f"Settings: searcher grid, {asha}")
    else:
        budget = (f"time_budget {fmt(s.time_budget)} s (while it is in force num_samples is not a limit; "
                  f"--num-samples caps the trials)" if s.time_budget else f"num_samples {s.num_samples}")
        lines.append(f"Settings: searcher optuna, {budget}, {asha}")
    return "\n".join(lines)
