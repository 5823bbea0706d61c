"""Greedy ensemble selection over a finished search's trials (Caruana et al. 2004), with the rule
that decides, on records the selection did not see, whether a team beats the single best trial.

This module owns:

* `greedy_path`: forward selection with replacement. Each pick adds the candidate whose addition
  gives the best average of probabilities on the search's own metric (training/metrics.py's
  `classification_metrics` on the argmax, as trials are scored; the clipped log loss for
  `val_loss`, in its direction from `metrics.direction`). Once `max_members` distinct trials
  are in, only they may be picked again. Ties: a trial already in (as AutoGluon does: no member
  is added for nothing, and every member costs a refit), then the better-ranked candidate. The
  path keeps its best iteration (the first with the best score), as AutoGluon does.
* `held_out_curves` and `choose_cap`, the held-out rule: repeated stratified 2-fold splits of the
  selection records (data/split.make_folds: by class, by patient when known); greedy selection
  runs on one half and the ensemble it keeps after a cap of t picks, for t = 1..ITERATIONS, is
  scored on the other half. t = 1 is the single best trial of that half. The smallest cap whose
  mean held-out score is within one standard error of the best cap's wins (the one-standard-error
  rule), so ensemble against single best and the ensemble's size are decided by records the
  selection did not see, and a team must beat the single best by more than the halves' noise; the test records are
  never among the selection records (they have no saved predictions, and are dropped if given).
  Selection then runs on all the selection records with that cap. A cap of 1 keeps the search's
  own best trial (best_config.json's), so that "the single best wins" delivers today's model.
* `select_ensemble` (the candidates, their common records, the rule, the `EnsembleRecord`) and
  `choose_for_run`, what the pipeline calls after a search (reads and writes through `RunFolder`).

Candidates whose predictions do not cover the best-ranked candidate's records are excluded (and
named in the record's rule); candidates covering more are restricted to those records.
Everything is deterministic: the halves derive from the seed, ties are broken by rank.

Limits, for whoever reads the figures: the candidates are the best by a ranking that saw all the
selection records (the same list for both sides of the comparison); a half-size selection is
noisier than the final one, so the rule leans towards the single best; a greedy path can stall
on its first trial when every pair scores below it on an argmax metric (re-picking it changes
nothing), as Caruana's plain method does. Cost: each distinct prediction vector is one
`classification_metrics` call (~3 ms), at most CANDIDATES x ITERATIONS x (2 x REPEATS + 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from ecg_tune.data.records import Records
from ecg_tune.data.split import make_folds
from ecg_tune.errors import DataError, EcgTuneError
from ecg_tune.runs import EnsembleMember, EnsembleRecord, RunFolder, TrialPredictions, TrialTable
from ecg_tune.training.metrics import classification_metrics, direction, log_loss
from ecg_tune.training.reported import FEASIBLE, VALIDATION

# The best trials (by the ranking metric) that selection may combine. auto-sklearn and AutoGluon
# combine their top 50 models or all of them; a search here has tens of trials, and candidates
# far down the ranking are rarely picked while each one adds a chance to fit the selection
# records' noise, which the held-out rule then has to pay for.
CANDIDATES = 25
# Picks per selection (weights are multiples of 1/ITERATIONS). AutoGluon's default ensemble size:
# TabRepo found no measurable gain above 25.
ITERATIONS = 25
# Repeats of the 2-fold split: 2 x REPEATS held-out halves average out which records fall where.
REPEATS = 5
LOSS = VALIDATION + "loss"  # scored on the probabilities, not on the argmax
_TIE = 1e-12  # relative: scores this close are equal (the same predictions can sum in another order)

Scorer = Callable[[np.ndarray], np.ndarray]


class EnsembleScorer:
    """Scores ensembles on fixed labels: `(ensembles, records, classes)` sums of member
    probabilities -> one oriented score each (the metric; negated for a loss, so that higher is
    always better). Classification metrics depend on the argmax only, and successive ensembles
    often share it, so each distinct prediction vector is scored once."""

    def __init__(self, metric: str, classes: Sequence[str], labels: np.ndarray) -> None:
        self.metric, self.classes, self.labels = metric, list(classes), np.asarray(labels, dtype=np.int64)
        self.sign = 1.0 if direction(metric) == "max" else -1.0
        self._cache: dict[bytes, float] = {}
        if metric != LOSS and metric not in classification_metrics(self.labels[:1], self.labels[:1], self.classes,
                                                                   prefix=VALIDATION):
            raise ValueError(f"{metric!r} cannot be computed from class probabilities for classes {self.classes}")

    def __call__(self, sums: np.ndarray) -> np.ndarray:
        if self.metric == LOSS:
            return -log_loss(sums / sums.sum(axis=2, keepdims=True), self.labels)  # each team's mean probability
        return np.array([self._predicted(row) for row in sums.argmax(axis=2)], dtype=float)

    def _predicted(self, predicted: np.ndarray) -> float:
        key = predicted.tobytes()
        if key not in self._cache:
            scores = classification_metrics(self.labels, predicted, self.classes, prefix=VALIDATION)
            self._cache[key] = self.sign * float(scores[self.metric])
        return self._cache[key]

    def value(self, oriented: float) -> float:
        """An oriented score in the metric's own units."""
        return self.sign * oriented


def _ties(scores: np.ndarray) -> np.ndarray:
    best = float(np.max(scores))
    return scores >= best - _TIE * max(1.0, abs(best))


@dataclass(frozen=True)
class GreedyPath:
    """One greedy selection: the candidate picked at each iteration and the ensemble's oriented
    score (higher is better) after it."""

    picks: tuple[int, ...]
    scores: tuple[float, ...]

    def kept(self, cap: int | None = None) -> int:
        """How many picks the selection keeps within the first `cap` (all): up to its first best."""
        return int(np.flatnonzero(_ties(np.asarray(self.scores[:cap])))[0]) + 1

    def weights(self, cap: int | None = None) -> dict[int, float]:
        """Candidate -> picks / kept picks, by picks (most first), then by first pick."""
        picks = self.picks[:self.kept(cap)]
        order = sorted(set(picks), key=lambda c: (-picks.count(c), picks.index(c)))
        return {c: picks.count(c) / len(picks) for c in order}


def greedy_path(probabilities: np.ndarray, score: Scorer, iterations: int, max_members: int) -> GreedyPath:
    """Greedy forward selection with replacement over `probabilities` (candidates, records,
    classes; candidates in rank order) for `iterations` picks, at most `max_members` distinct."""
    if iterations < 1 or max_members < 1 or len(probabilities) == 0:
        raise ValueError("greedy selection needs a candidate, an iteration and a member")
    total = np.zeros(probabilities.shape[1:], dtype=np.float64)
    picks: list[int] = []
    scores: list[float] = []
    for _ in range(iterations):
        used = sorted(set(picks))
        allowed = np.arange(len(probabilities)) if len(used) < max_members else np.asarray(used)
        oriented = score(total[None] + probabilities[allowed])
        tied = [int(c) for c in allowed[_ties(oriented)]]
        again = [c for c in tied if c in used]
        pick = min(again or tied)  # candidates are in rank order: the lower index is the better trial
        picks.append(pick)
        scores.append(float(oriented[int(np.flatnonzero(allowed == pick)[0])]))
        total += probabilities[pick]
    return GreedyPath(tuple(picks), tuple(scores))


def held_out_curves(probabilities: np.ndarray, labels: np.ndarray, halves: Sequence[np.ndarray],
                    make_scorer: Callable[[np.ndarray], Scorer], iterations: int, max_members: int) -> np.ndarray:
    """(halves, iterations): for each selection half (a boolean mask over the records), the
    oriented score on the other records of the ensemble greedy selection keeps on the half with a
    cap of t picks, t = 1..iterations. Only the half's records and labels reach the selection."""
    curves = []
    for half in halves:
        chosen, other = np.flatnonzero(half), np.flatnonzero(~half)
        path = greedy_path(probabilities[:, chosen], make_scorer(labels[chosen]), iterations, max_members)
        prefixes = np.cumsum(probabilities[list(path.picks)][:, other], axis=0)  # the ensemble after each pick
        held = make_scorer(labels[other])(prefixes)
        curves.append(held[[path.kept(cap) - 1 for cap in range(1, iterations + 1)]])
    return np.asarray(curves, dtype=float)


def choose_cap(curves: np.ndarray) -> int:
    """The cap on picks (1: the single best) by the mean held-out score over the halves (`curves`:
    halves x caps), differences paired by half. A team must beat the single best by more than one
    standard error of its own gain (measured on a smoke search: a +0.0003 mean gain with a 0.0076
    spread picked a team of a 0.28 and a 0.17 trial that tested 0.06 below the single best); among
    the teams that do, the smallest whose score is within one standard error of the best such
    team's (Breiman's one-standard-error rule: of two sizes the halves cannot tell apart the
    smaller wins, as every member costs a refit). Checking the team against the single best, not
    only against the best cap, matters: on CinC (seed 1) the best cap beat the single best by
    0.0022 with an error of 0.0015, and the smallest cap within an error of it was a team that
    gained 0.0003, a majority-class trial at weight 0.5."""
    means = curves.mean(axis=0)

    def beats(better: int, worse: int) -> bool:
        gain = curves[:, better] - curves[:, worse]
        error = float(gain.std(ddof=1)) / np.sqrt(len(gain)) if len(gain) > 1 else 0.0
        return float(gain.mean()) > error + _TIE * max(1.0, abs(float(means[better])))

    winners = [cap for cap in range(1, curves.shape[1]) if beats(cap, 0)]
    if not winners:
        return 1
    best = max(winners, key=lambda cap: (means[cap], -cap))
    return next(cap for cap in winners if cap == best or not beats(best, cap)) + 1


def stratified_halves(records: Records, positions: np.ndarray, repeats: int, seed: int) -> list[np.ndarray]:
    """2 x `repeats` selection halves of the records at `positions` (masks over them): each repeat
    one stratified, patient-aware 2-fold split (data/split.make_folds), each fold a half in turn.
    DataError when a class has a single record (or patient) there."""
    part = np.full(len(records), "test", dtype="<U5")
    part[positions] = "val"
    halves = []
    for repeat in range(repeats):
        fold = make_folds(records, part, 2, seed=seed * repeats + repeat)[positions]
        halves += [fold == 0, fold == 1]
    return halves


@dataclass
class _Pool:
    """The candidates that can be combined: their probabilities on common records, in rank order."""

    trial_ids: list[str]
    probabilities: np.ndarray  # (candidates, records, classes), float64, the dataset's class order
    positions: np.ndarray  # the common records' positions in `Records`
    excluded: list[str] = field(default_factory=list)  # "<trial> (why)"
    dropped: int = 0  # records of the best candidate that cannot be used (test, unknown, unlabelled)


def _pool(predictions: Mapping[str, TrialPredictions], records: Records, split: np.ndarray | None,
          ranking: Sequence[str], candidates: int) -> _Pool | None:
    assert records.labels is not None  # a search's records are labelled
    position = {rid: i for i, rid in enumerate(records.record_ids)}
    usable = np.ones(len(records), dtype=bool) if split is None else np.asarray(split) != "test"
    ranked = [t for t in ranking if t in predictions]
    if not ranked:
        return None
    first = predictions[ranked[0]]
    found = [position[r] for r in first.record_ids if r in position]
    common = np.array(sorted(p for p in found if usable[p]), dtype=np.int64)
    pool = _Pool([], np.empty(0), common, dropped=len(first.record_ids) - len(common))
    wanted = [records.record_ids[p] for p in common]
    matrices: list[np.ndarray] = []
    for trial in ranked:
        if len(matrices) == candidates:
            break
        saved = predictions[trial]
        rows = {rid: k for k, rid in enumerate(saved.record_ids)}
        covered = sum(r in rows for r in wanted)
        if set(saved.classes) != set(records.classes):
            pool.excluded.append(f"{trial} (classes {', '.join(saved.classes)})")
        elif covered < len(wanted):
            pool.excluded.append(f"{trial} (covers {covered} of {len(wanted)} records)")
        elif not np.isfinite(saved.probabilities).all():  # a diverged trial: no score to compare
            pool.excluded.append(f"{trial} (non-finite probabilities)")
        else:
            columns = [saved.classes.index(c) for c in records.classes]
            matrices.append(saved.probabilities[[rows[r] for r in wanted]][:, columns].astype(np.float64))
            pool.trial_ids.append(trial)
    pool.probabilities = (np.stack(matrices) if matrices
                          else np.empty((0, len(common), len(records.classes)), dtype=np.float64))
    return pool


def select_ensemble(predictions: Mapping[str, TrialPredictions], records: Records, split: np.ndarray | None,
                    ranking: Sequence[str], metric: str, max_members: int, seed: int = 0,
                    candidates: int = CANDIDATES, iterations: int = ITERATIONS,
                    repeats: int = REPEATS) -> EnsembleRecord:
    """The team for a search: `predictions` by trial id, `records` with their true labels,
    `split` per record ("test" records are never used; None: no test records among them),
    `ranking` the trial ids best first (`rank_trials`), the search's `metric`, at most
    `max_members` distinct trials. See the module docstring for the rule."""
    if not ranking:
        raise ValueError("no ranked trial to select from")
    if max_members < 1:
        raise ValueError(f"max_members must be at least 1, got {max_members}")
    best = ranking[0]
    if max_members == 1:
        return _single(best, metric, "the single best trial: --ensemble 1")
    pool = _pool(predictions, records, split, ranking, candidates)
    if pool is None:
        return _single(best, metric, "the single best trial: no trial saved validation predictions")
    excluded = f"; excluded for their records: {', '.join(pool.excluded)}" if pool.excluded else ""
    if not pool.trial_ids or pool.trial_ids[0] != best:
        # The held-out rule compares a team with the trial the refit would deliver alone; without
        # that trial's predictions it would judge against another one.
        return _single(best, metric, f"the single best trial: its saved predictions are missing or unusable, "
                                     f"so no team can be judged against it{excluded}")
    figures = {"candidates": float(len(pool.trial_ids)), "excluded": float(len(pool.excluded)),
               "records": float(len(pool.positions)), "dropped_records": float(pool.dropped)}
    if len(pool.trial_ids) < 2 or len(pool.positions) < 4:
        return _single(best, metric, f"the single best trial: {len(pool.trial_ids)} candidate(s) on "
                                     f"{len(pool.positions)} common records, nothing to choose{excluded}", figures)
    assert records.labels is not None
    labels = records.labels[pool.positions]
    make_scorer = partial(EnsembleScorer, metric, records.classes)
    try:
        halves = stratified_halves(records, pool.positions, repeats, seed)
    except DataError as exc:
        return _single(best, metric, f"the single best trial: the selection records cannot be halved ({exc})"
                                     f"{excluded}", figures)
    curves = held_out_curves(pool.probabilities, labels, halves, make_scorer, iterations, max_members)
    cap = choose_cap(curves)
    scorer = make_scorer(labels)
    sign = scorer.sign
    gain = curves[:, cap - 1] - curves[:, 0]
    figures.update({"splits": float(len(halves)), "iterations": float(cap),
                    "held_out_ensemble": sign * float(curves[:, cap - 1].mean()),
                    "held_out_single_best": sign * float(curves[:, 0].mean()),
                    "held_out_gain_std": float(gain.std(ddof=1))})
    if iterations > 1:  # what the best cap above one scored: how far a team was from winning
        figures["held_out_best_team"] = sign * float(curves[:, 1:].mean(axis=0).max())
    if best in pool.trial_ids:
        only = pool.probabilities[[pool.trial_ids.index(best)]]
        figures["in_sample_single_best"] = scorer.value(float(scorer(only)[0]))
    rule = (f"greedy selection with replacement over the best {len(pool.trial_ids)} trials by {metric} (at most "
            f"{max_members} distinct, up to {iterations} picks, keeping the best pick); the cap on picks (1: the "
            f"single best) chosen by the mean held-out {metric} over {len(halves)} halves ({repeats} stratified "
            f"2-fold splits of the {len(pool.positions)} selection records, seed {seed}): selected on one half, "
            f"scored on the other{excluded}")
    if cap == 1:
        return _single(best, metric, f"the single best trial: {rule}", figures)
    path = greedy_path(pool.probabilities, scorer, cap, max_members)
    weights = path.weights()
    figures["picks"] = float(path.kept())
    figures["in_sample_ensemble"] = scorer.value(path.scores[path.kept() - 1])
    rule += f"; on all the records it kept {path.kept()} pick(s) of {len(weights)} trial(s)"
    members = tuple(EnsembleMember(trial_id=pool.trial_ids[c], weight=w) for c, w in weights.items())
    return EnsembleRecord(members=members, metric=metric, rule=rule, figures=figures)


def _single(trial_id: str, metric: str, rule: str, figures: dict[str, float] | None = None) -> EnsembleRecord:
    return EnsembleRecord(members=(EnsembleMember(trial_id=trial_id, weight=1.0),), metric=metric, rule=rule,
                          figures=figures or {})


def rank_trials(table: TrialTable, metric: str) -> list[str]:
    """Trial ids by their best `metric` (trials.csv's best/<metric>), best first; ties keep the
    table's order (so the first is best_config.json's trial); trials without a score, and those
    that broke the search's cost limits (final/feasible 0: never a member), are left out."""
    if metric not in table.best:
        return []
    scores = table.best[metric].astype(float).dropna()
    if FEASIBLE in table.final:
        infeasible = table.final.index[table.final[FEASIBLE].astype(float) <= 0]
        scores = scores[~scores.index.isin(infeasible)]
    order = scores.sort_values(ascending=direction(metric) == "min", kind="stable")
    return [str(i) for i in order.index]


def choose_for_run(run: RunFolder, records: Records, split: np.ndarray, metric: str, max_members: int,
                   seed: int = 0) -> EnsembleRecord:
    """Select the team of a finished search in `run` (its trials.csv and saved predictions) and
    write it as ensemble.json."""
    ranking = rank_trials(run.trial_table(), metric)
    if not ranking:
        raise EcgTuneError(f"{run.path}: no trial in trials.csv has {metric}; nothing to select from")
    try:
        predictions = run.trial_predictions()
    except EcgTuneError as exc:  # a damaged file must not cost the search its refit
        record = _single(ranking[0], metric, f"the single best trial: the saved predictions are unreadable ({exc})")
    else:
        try:
            record = select_ensemble(predictions, records, split, ranking, metric, max_members, seed)
        except ValueError as exc:  # e.g. a metric that class probabilities cannot give
            record = _single(ranking[0], metric, f"the single best trial: no selection ({exc})")
    run.write_ensemble(record)
    return record


def describe(record: EnsembleRecord) -> str:
    """One line: the members and weights, and the held-out figures that chose them."""
    figures = record.figures
    held = ""
    if "held_out_ensemble" in figures:
        where = (f"{figures['splits']:g} halves of {figures['records']:g} records, "
                 f"{figures['candidates']:g} candidates")
        if "picks" in figures:
            held = (f"; held-out {record.metric} {figures['held_out_ensemble']:.4f} vs "
                    f"{figures['held_out_single_best']:.4f} for the single best (a cap of "
                    f"{figures['iterations']:g} picks; {where})")
        else:
            rival = figures.get("held_out_best_team", float("nan"))
            held = (f"; held-out {record.metric} {figures['held_out_single_best']:.4f} vs {rival:.4f} "
                    f"for the best team ({where})")
    if "picks" not in figures:  # no selection ran on all the records: the single best was kept
        # without held-out figures, the rule's first clause says why nothing was selected
        why = "" if held else " (" + record.rule.partition(": ")[2].partition(";")[0] + ")"
        return f"ensemble: the single best trial {record.members[0].trial_id}{held}{why}"
    members = ", ".join(f"{m.trial_id} {m.weight:.2f}" for m in record.members)
    return f"ensemble: {len(record.members)} member(s) ({members}) from {figures['picks']:g} picks{held}"
