"""The text `--dry-run` prints for an adapted space: effective values, conditions, start points, grid
size; and how much of the space is feasible under the search's cost limits (`feasibility`, which
search/plan.py puts in the plan, so that `--dry-run` and the search's first line both say it and a
space with no feasible configuration fails before anything is trained)."""

from __future__ import annotations

from dataclasses import dataclass

from ecg_tune.search.adapt import AdaptedSpace
from ecg_tune.search.parameters import fmt
from ecg_tune.search.samplers import CostCheck, grid_points, sample_configs
from ecg_tune.training.costs import CostLimits
from ecg_tune.training.reported import MACS, N_PARAMS

# Configurations `feasibility` draws at random to say how much of a space meets the limits.
FEASIBILITY_SAMPLES = 200


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


@dataclass(frozen=True)
class Feasibility:
    """How many of `sampled` configurations (random draws, or a grid's every point) meet the
    limits checkable before training, and the smallest estimates seen."""

    sampled: int
    feasible: int
    limits: CostLimits
    smallest_params: float
    smallest_macs: float
    grid: bool = False
    # "start point N: what it breaks" for each start point above the limits (the keys it leaves out
    # drawn at random once: the searcher decides on the values it draws for them).
    start_points: tuple[str, ...] = ()

    def describe(self) -> str:
        """E.g. "feasible: 87 of 200 sampled configurations (params <= 20000)"."""
        which = "grid configurations" if self.grid else "sampled configurations"
        skipped = "".join(f"; {point} (skipped)" for point in self.start_points)
        return f"feasible: {self.feasible} of {self.sampled} {which} ({self.limits.describe()}){skipped}"

    def none_feasible(self) -> str:
        """The one-line error of a space with no feasible configuration, naming the limits."""
        names = {"max_params": "--max-params", "max_macs": "--max-macs"}
        limited = ", ".join(f"{flag} {getattr(self.limits, name)}" for name, flag in names.items()
                            if getattr(self.limits, name) is not None)
        which = "of the grid configurations" if self.grid else f"of the {self.sampled} sampled configurations"
        return (f"{limited}: none {which} is within the limit (the smallest: {self.smallest_params:.0f} parameters, "
                f"{self.smallest_macs:.0f} MACs per record); raise the limit or search smaller networks")


def feasibility(space: AdaptedSpace, limits: CostLimits, configs: list[dict] | None = None,
                samples: int = FEASIBILITY_SAMPLES, seed: int = 0, check: CostCheck | None = None) -> Feasibility:
    """The share of `configs` (default: `samples` drawn at random through the define-by-run
    function, as `--dry-run` reports it) whose estimated parameters and MACs meet `limits`;
    `check`: the estimates to use (and keep)."""
    limits = limits.checked_before_training()
    check = check or CostCheck(space, limits)
    grid = configs is not None
    drawn = configs if configs is not None else sample_configs(space, samples, seed)
    figures = [check.figures(values) for values in drawn]
    started = sample_configs(space, 0, seed, start=space.start)  # the start points as the searcher runs them
    starts = tuple(f"start point {number}: {broken}" for number, values in enumerate(started, 1)
                   if (broken := check.broken(values)))
    return Feasibility(sampled=len(drawn), feasible=sum(limits.feasible(f) for f in figures), limits=limits,
                       smallest_params=min((f[N_PARAMS] for f in figures), default=0.0),
                       smallest_macs=min((f[MACS] for f in figures), default=0.0), grid=grid, start_points=starts)
