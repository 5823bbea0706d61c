"""Greedy ensemble selection (ecg_tune/search/ensemble.py): against a plain reference on small
probability matrices (with replacement, best iteration, ties, the cap on members, a loss), the
held-out rule (it sees only the records it is given; an in-sample choice that overfits is
refused), determinism, records that do not match, and the run folder's ensemble.json. Pure numpy:
no Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ecg_tune.data.records import Records
from ecg_tune.runs import RunFolder, TrialPredictions, TrialRecord, TrialTable
from ecg_tune.search.ensemble import (
    EnsembleScorer,
    choose_cap,
    choose_for_run,
    describe,
    greedy_path,
    held_out_curves,
    rank_trials,
    select_ensemble,
    stratified_halves,
)
from ecg_tune.search.plan import SearchOptions
from ecg_tune.training.metrics import classification_metrics, direction

CLASSES = ["c0", "c1", "c2"]


def reference_greedy(probabilities: np.ndarray, labels: np.ndarray, metric: str, classes: list[str],
                     iterations: int, max_members: int) -> tuple[list[int], list[float], int]:
    """Caruana's selection written plainly: every candidate's ensemble recomputed as the mean of
    its members; ties to a member already in, then to the lower index; the first best kept."""
    sign = 1.0 if direction(metric) == "max" else -1.0
    picks: list[int] = []
    scores: list[float] = []
    for _ in range(iterations):
        used = set(picks)
        allowed = range(len(probabilities)) if len(used) < max_members else sorted(used)
        tried = []
        for candidate in allowed:
            mean = np.mean([probabilities[j] for j in [*picks, candidate]], axis=0)
            if metric == "val_loss":
                value = float(np.mean([-np.log(max(mean[r, labels[r]], 1e-12)) for r in range(len(labels))]))
            else:
                value = classification_metrics(labels, mean.argmax(axis=1), classes, prefix="val_")[metric]
            tried.append((candidate, sign * value))
        top = max(value for _, value in tried)
        tied = [c for c, value in tried if value >= top - 1e-9]
        pick = min([c for c in tied if c in used] or tied)
        picks.append(pick)
        scores.append(dict(tried)[pick])
    kept = next(i for i, s in enumerate(scores) if s >= max(scores) - 1e-9) + 1
    return picks, scores, kept


def random_probabilities(candidates: int, records: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, records)
    signal = rng.uniform(0.0, 2.0, candidates)[:, None, None] * np.eye(classes)[labels]
    logits = signal + rng.normal(0.0, 1.0, (candidates, records, classes))
    probabilities = np.exp(logits)
    return probabilities / probabilities.sum(axis=2, keepdims=True), labels


@pytest.mark.parametrize("metric", ["val_accuracy", "val_macro_f1", "val_f1_c1", "val_loss"])
@pytest.mark.parametrize("max_members", [1, 2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_matches_the_plain_reference(metric: str, max_members: int, seed: int) -> None:
    probabilities, labels = random_probabilities(6, 30, 3, seed)
    path = greedy_path(probabilities, EnsembleScorer(metric, CLASSES, labels), 8, max_members)
    picks, scores, kept = reference_greedy(probabilities, labels, metric, CLASSES, 8, max_members)
    assert list(path.picks) == picks
    assert np.allclose(path.scores, scores, atol=1e-9)
    assert path.kept() == kept
    assert len(set(path.picks)) <= max_members  # K caps the distinct members
    weights = path.weights()
    assert abs(sum(weights.values()) - 1.0) < 1e-12
    assert set(weights) == set(path.picks[:kept])


def test_with_replacement_a_trial_picked_twice() -> None:
    # A is right on r0 and r1, B only on r2; A + B is wrong on r0, 2A + B is right everywhere.
    a = [[0.9, 0.1], [0.45, 0.55], [0.6, 0.4]]
    b = [[0.0, 1.0], [0.5, 0.5], [0.0, 1.0]]
    labels = np.array([0, 1, 1])
    score = EnsembleScorer("val_accuracy", ["x", "y"], labels)
    path = greedy_path(np.array([a, b]), score, 5, 2)
    # Picking A again ties with adding B (2/3 each): the member already in wins the tie.
    assert path.picks[:3] == (0, 0, 1)
    assert np.allclose(path.scores, [2 / 3, 2 / 3, 1, 1, 1])
    assert path.kept() == 3  # the first best iteration, not a later equal one
    assert path.weights() == {0: pytest.approx(2 / 3), 1: pytest.approx(1 / 3)}
    # B first in the ranking: the first pick is still A (B alone is worse), and at the tie A
    # (already in) is preferred over the better-ranked B.
    swapped = greedy_path(np.array([b, a]), score, 3, 2)
    assert swapped.picks == (1, 1, 0)


def test_best_iteration_and_ties_on_a_loss() -> None:
    # Symmetric A and B: equal alone (the lower index wins), best as a pair, worse in any 2:1 mix.
    a = [[0.9, 0.1], [0.6, 0.4]]
    b = [[0.4, 0.6], [0.1, 0.9]]
    score = EnsembleScorer("val_loss", ["x", "y"], np.array([0, 1]))
    path = greedy_path(np.array([a, b]), score, 4, 2)
    assert path.picks[:2] == (0, 1)
    assert path.picks[2] == 0  # 2A + B and A + 2B tie: the lower index
    losses = [-s for s in path.scores]
    assert losses[0] == pytest.approx(-(np.log(0.9) + np.log(0.4)) / 2)
    assert losses[1] == pytest.approx(-np.log(0.65)) and losses[2] > losses[1]
    assert path.kept() == 2 and path.weights() == {0: 0.5, 1: 0.5}
    assert path.kept(cap=1) == 1  # within a cap of one pick: the single best


def test_identical_candidates_tie_to_the_better_ranked() -> None:
    probabilities, labels = random_probabilities(1, 20, 3, 5)
    twins = np.concatenate([probabilities, probabilities, probabilities])
    path = greedy_path(twins, EnsembleScorer("val_macro_f1", CLASSES, labels), 5, 3)
    assert path.picks == (0, 0, 0, 0, 0) and path.weights() == {0: 1.0}


def test_held_out_curves_select_on_the_half_and_score_on_the_rest() -> None:
    probabilities, labels = random_probabilities(5, 40, 3, 3)
    half = np.zeros(40, dtype=bool)
    half[::2] = True
    seen: list[int] = []

    def make_scorer(given: np.ndarray) -> EnsembleScorer:
        seen.append(len(given))
        return EnsembleScorer("val_accuracy", CLASSES, given)

    curves = held_out_curves(probabilities, labels, [half], make_scorer, 6, 3)
    assert seen == [20, 20]  # one scorer for the selection half, one for the held-out half
    # The selection, redone on the half's records alone (the rest replaced by garbage), is the same;
    # each cap's score is its kept ensemble scored on the other records.
    garbage = probabilities.copy()
    garbage[:, ~half] = np.random.default_rng(9).dirichlet(np.ones(3), (5, 20))
    path = greedy_path(garbage[:, half], EnsembleScorer("val_accuracy", CLASSES, labels[half]), 6, 3)
    held = EnsembleScorer("val_accuracy", CLASSES, labels[~half])
    for cap in range(1, 7):
        members = list(path.picks[:path.kept(cap)])
        expected = held(probabilities[members][:, ~half].sum(axis=0, keepdims=True))[0]
        assert curves[0, cap - 1] == pytest.approx(expected)


def test_choose_cap_takes_the_smallest_within_one_standard_error_of_the_best() -> None:
    # A team better in every half: chosen; the size above it adds nothing the halves can tell.
    assert choose_cap(np.array([[0.5, 0.6, 0.6], [0.5, 0.61, 0.62], [0.5, 0.6, 0.6]])) == 2
    assert choose_cap(np.array([[0.5, 0.6, 0.7], [0.5, 0.6, 0.7], [0.5, 0.6, 0.71]])) == 3
    # A mean gain smaller than its standard error: the single best.
    assert choose_cap(np.array([[0.5, 0.51], [0.5, 0.49], [0.5, 0.52]])) == 1
    assert choose_cap(np.array([[0.5, 0.7, 0.7], [0.7, 0.6, 0.6]])) == 1
    assert choose_cap(np.array([[0.7, 0.7], [0.6, 0.6]])) == 1  # ties: the smaller
    # A size within an error of the best team that does not itself beat the single best is not
    # a winner: the best team is (the CinC seed-1 case, where a majority-class trial joined).
    halves = np.array([[0.5, 0.46, 0.52], [0.5, 0.56, 0.52], [0.5, 0.47, 0.53], [0.5, 0.55, 0.52]])
    assert choose_cap(halves) == 3


# select_ensemble: candidates as TrialPredictions over a small Records


def records_and_predictions(records: int = 120, good: tuple[float, ...] = (1.5,), noise: int = 8,
                            seed: int = 0) -> tuple[Records, dict[str, TrialPredictions], list[str]]:
    """Trials g0.. with real signal (as strong as `good`) and n0.. of pure noise, ranked by accuracy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, records)
    ids = [f"r{i:03d}" for i in range(records)]
    data = Records(signals=[np.zeros(4, dtype=np.float32)] * records, labels=labels, classes=list(CLASSES),
                   record_ids=ids)
    predictions = {}
    strengths = {**{f"g{k}": s for k, s in enumerate(good)}, **{f"n{k}": 0.0 for k in range(noise)}}
    for trial, strength in strengths.items():
        logits = strength * np.eye(3)[labels] + rng.normal(0.0, 1.0, (records, 3))
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        predictions[trial] = TrialPredictions(trial, 5, tuple(ids), tuple(CLASSES), p.astype(np.float32))
    accuracy = {t: float(np.mean(p.probabilities.argmax(axis=1) == labels)) for t, p in predictions.items()}
    return data, predictions, sorted(predictions, key=lambda t: -accuracy[t])


def test_held_out_rule_keeps_the_single_best_when_the_in_sample_choice_overfits() -> None:
    data, predictions, ranking = records_and_predictions()
    assert ranking[0] == "g0"
    assert data.labels is not None
    # In sample, greedy selection over g0 and eight noise trials "improves" on g0 by fitting noise.
    everything = np.stack([predictions[t].probabilities.astype(float) for t in ranking])
    score = EnsembleScorer("val_accuracy", CLASSES, data.labels)
    path = greedy_path(everything, score, 25, 5)
    assert path.kept() > 1 and len(path.weights()) > 1
    assert score.value(path.scores[path.kept() - 1]) > score.value(path.scores[0]) + 0.02
    record = select_ensemble(predictions, data, None, ranking, "val_accuracy", max_members=5, seed=0)
    assert [(m.trial_id, m.weight) for m in record.members] == [("g0", 1.0)]
    assert record.figures["iterations"] == 1
    assert "held-out" in record.rule and "single best" in record.rule
    assert record.figures["held_out_best_team"] <= record.figures["held_out_single_best"]
    assert describe(record).startswith("ensemble: the single best trial g0; held-out val_accuracy")


def test_held_out_rule_takes_a_team_of_independent_trials() -> None:
    data, predictions, ranking = records_and_predictions(good=(1.5, 1.4, 1.3, 1.2), noise=2)
    record = select_ensemble(predictions, data, None, ranking, "val_macro_f1", max_members=3, seed=0,
                             iterations=10, repeats=3)
    assert 2 <= len(record.members) <= 3  # K caps the distinct members
    assert all(m.trial_id.startswith("g") for m in record.members)
    assert sum(m.weight for m in record.members) == pytest.approx(1.0)
    assert record.figures["held_out_ensemble"] > record.figures["held_out_single_best"]
    assert record.figures["splits"] == 6 and record.figures["candidates"] == 6
    assert "member" in describe(record) and record.members[0].trial_id in describe(record)


def test_a_loss_is_minimised() -> None:
    data, predictions, ranking = records_and_predictions(good=(1.5, 1.4, 1.3), noise=2, seed=4)
    record = select_ensemble(predictions, data, None, ranking, "val_loss", max_members=3, seed=0,
                             iterations=10, repeats=2)
    assert record.metric == "val_loss" and len(record.members) > 1
    assert record.figures["held_out_ensemble"] < record.figures["held_out_single_best"]
    assert record.figures["in_sample_ensemble"] < record.figures["in_sample_single_best"]


def test_selection_is_deterministic_from_its_seed() -> None:
    data, predictions, ranking = records_and_predictions(good=(1.5, 1.4, 1.3), noise=3)
    runs = [select_ensemble(predictions, data, None, ranking, "val_accuracy", 3, seed=s, iterations=8, repeats=2)
            for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    halves = [stratified_halves(data, np.arange(len(data)), 2, seed) for seed in (7, 7, 8)]
    assert all((a == b).all() for a, b in zip(halves[0], halves[1], strict=True))
    assert any((a != b).any() for a, b in zip(halves[0], halves[2], strict=True))


def test_halves_are_stratified_complementary_and_keep_patients_together() -> None:
    data, _, _ = records_and_predictions(records=60)
    data.groups = [f"p{i // 2}" for i in range(60)]  # two records per patient
    positions = np.arange(10, 60)  # the selection records only
    halves = stratified_halves(data, positions, 2, seed=0)
    assert len(halves) == 4 and all(len(h) == 50 for h in halves)
    assert (halves[0] == ~halves[1]).all() and (halves[2] == ~halves[3]).all()
    assert data.labels is not None
    for half in halves:
        chosen = positions[half]
        assert set(data.labels[chosen]) == {0, 1, 2}
        patients = {data.groups[i] for i in chosen}
        assert not patients & {data.groups[i] for i in positions[~half]}


def test_single_best_with_one_member_or_nothing_to_combine() -> None:
    data, predictions, ranking = records_and_predictions(noise=2)
    one = select_ensemble(predictions, data, None, ranking, "val_accuracy", max_members=1)
    assert [(m.trial_id, m.weight) for m in one.members] == [(ranking[0], 1.0)] and one.figures == {}
    nothing = select_ensemble({}, data, None, ranking, "val_accuracy", max_members=3)
    assert nothing.members[0].trial_id == ranking[0] and "no trial saved" in nothing.rule
    alone = select_ensemble({ranking[1]: predictions[ranking[1]]}, data, None, ranking, "val_accuracy", 3)
    assert alone.members[0].trial_id == ranking[0]  # the search's best, though it saved nothing
    assert "single best" in describe(alone)


def test_test_records_are_never_selected_on() -> None:
    data, predictions, ranking = records_and_predictions(good=(1.5, 1.4, 1.3), noise=2)
    split = np.array(["val"] * 100 + ["test"] * 20)
    chosen = select_ensemble(predictions, data, split, ranking, "val_accuracy", 3, iterations=8, repeats=2)
    assert chosen.figures["records"] == 100 and chosen.figures["dropped_records"] == 20
    # Whatever the test records hold, the choice is the same.
    assert data.labels is not None
    shuffled = Records(signals=data.signals, labels=np.concatenate([data.labels[:100], (data.labels[100:] + 1) % 3]),
                       classes=data.classes, record_ids=data.record_ids)
    garbage = {t: TrialPredictions(t, p.epoch, p.record_ids, p.classes,
                                   np.concatenate([p.probabilities[:100], p.probabilities[100:][::-1]]))
               for t, p in predictions.items()}
    assert select_ensemble(garbage, shuffled, split, ranking, "val_accuracy", 3, iterations=8, repeats=2) == chosen
    # and the same as if the test records had never been given
    val_only = {t: TrialPredictions(t, p.epoch, p.record_ids[:100], p.classes, p.probabilities[:100])
                for t, p in predictions.items()}
    alone = select_ensemble(val_only, data, split, ranking, "val_accuracy", 3, iterations=8, repeats=2)
    assert alone.members == chosen.members and alone.figures["dropped_records"] == 0


def test_records_that_do_not_match() -> None:
    data, predictions, ranking = records_and_predictions(good=(1.5, 1.4, 1.3), noise=2)
    short, wide, turned = ranking[1], ranking[2], ranking[3]
    p = predictions[short]
    predictions[short] = TrialPredictions(short, p.epoch, p.record_ids[:90], p.classes, p.probabilities[:90])
    # More records than the best candidate's (an extra, unknown one) and another class order: used as they are.
    p = predictions[wide]
    predictions[wide] = TrialPredictions(wide, p.epoch, (*p.record_ids, "elsewhere"), p.classes,
                                         np.concatenate([p.probabilities, [[1.0, 0.0, 0.0]]]).astype(np.float32))
    p = predictions[turned]
    predictions[turned] = TrialPredictions(turned, p.epoch, p.record_ids, p.classes[::-1], p.probabilities[:, ::-1])
    diverged = ranking[4]
    p = predictions[diverged]
    predictions[diverged] = TrialPredictions(diverged, p.epoch, p.record_ids, p.classes,
                                             np.full_like(p.probabilities, np.nan))
    record = select_ensemble(predictions, data, None, ranking, "val_accuracy", 3, iterations=8, repeats=2)
    assert record.figures["excluded"] == 2 and record.figures["candidates"] == len(ranking) - 2
    assert f"{short} (covers 90 of 120 records)" in record.rule
    assert f"{diverged} (non-finite probabilities)" in record.rule
    assert all(m.trial_id not in (short, diverged) for m in record.members)
    # The turned trial's columns are put back in the dataset's order: the same choice as unturned.
    original = records_and_predictions(good=(1.5, 1.4, 1.3), noise=2)[1]
    original[short], original[diverged] = predictions[short], predictions[diverged]
    assert select_ensemble(original, data, None, ranking, "val_accuracy", 3, iterations=8, repeats=2) == record


def test_rank_trials_in_the_metrics_direction() -> None:
    frame = pd.DataFrame({"trial_id": ["a", "b", "c", "d"], "status": "completed", "epochs": 3,
                          "best/val_macro_f1": [0.5, 0.7, np.nan, 0.7], "best/val_loss": [0.4, 0.2, 0.9, 0.3]})
    table = TrialTable.from_frame(frame)
    assert rank_trials(table, "val_macro_f1") == ["b", "d", "a"]  # ties keep the table's order, NaN left out
    assert rank_trials(table, "val_loss") == ["b", "d", "a", "c"]
    assert rank_trials(table, "val_accuracy") == []
    # Cost limits: an infeasible trial is never ranked, and a repeated id does not break the ranking.
    frame["final/feasible"] = [1.0, 0.0, 1.0, 1.0]
    assert rank_trials(TrialTable.from_frame(frame), "val_macro_f1") == ["d", "a"]
    twice = pd.concat([frame, frame.iloc[[3]].assign(**{"best/val_macro_f1": np.nan})], ignore_index=True)
    assert rank_trials(TrialTable.from_frame(twice), "val_macro_f1") == ["d", "a"]


def test_choose_for_run_writes_ensemble_json(tmp_path) -> None:
    data, predictions, ranking = records_and_predictions(good=(1.5, 1.4), noise=1)
    run = RunFolder(tmp_path)
    trials = [TrialRecord(trial_id=t, status="completed", epochs=5, config={"lr": 0.01},
                          best={"val_accuracy": float(np.mean(p.probabilities.argmax(axis=1) == data.labels))},
                          best_epoch=5) for t, p in predictions.items()]
    run.write_trials(trials)
    for p in predictions.values():
        run.write_trial_predictions(p)
    record = choose_for_run(run, data, np.array(["val"] * len(data)), "val_accuracy", 2)
    assert run.ensemble() == record
    # The same choice select_ensemble makes on the same inputs, read back through the run folder.
    ranked = [t.trial_id for t in sorted(trials, key=lambda t: -t.best["val_accuracy"])]
    direct = select_ensemble(predictions, data, None, ranked, "val_accuracy", max_members=2, seed=0)
    assert record.members == direct.members and record.members[0].trial_id == ranked[0]


def test_a_best_trial_without_predictions_is_kept_alone() -> None:
    # A team is judged against the trial the refit delivers alone: without its predictions no team.
    data, predictions, ranking = records_and_predictions(good=(1.5, 1.4, 1.3), noise=2)
    missing = {t: p for t, p in predictions.items() if t != ranking[0]}
    record = select_ensemble(missing, data, None, ranking, "val_accuracy", max_members=3, seed=0)
    assert [(m.trial_id, m.weight) for m in record.members] == [(ranking[0], 1.0)]
    assert "missing or unusable" in record.rule


def test_search_options_take_an_ensemble_cap(tmp_path) -> None:
    assert SearchOptions(out=tmp_path).ensemble == 1
    assert SearchOptions(out=tmp_path, ensemble=4).ensemble == 4
    with pytest.raises(ValueError):
        SearchOptions(out=tmp_path, ensemble=0)
