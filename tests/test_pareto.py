"""The Pareto front (issue 26, item 3): `non_dominated` against a brute-force reference and a
hand-made table; the front of a trials table with and without the cost columns; pareto.csv written
by a search and rebuilt by `ecg-tune report`; report.html's Pareto section (or its note); and
`ecg-tune refit --trial`, which delivers any trial instead of the best one.

The cost keys (n_params, macs, latency_ms, feasible) come from the trials themselves once every
trial reports them; here the tables are made by hand, so these tests do not depend on that.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecg_tune.cli import main
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.reporting.page import build_page, write_html_report
from ecg_tune.reporting.pareto import halvings, hypervolume, non_dominated, pareto_front, recorded_objectives, run_front
from ecg_tune.runs import BestConfig, RunFolder, TrialRecord, TrialTable

# --------------------------------------------------------------------------------------------
# non_dominated


def brute_force(values: np.ndarray, maximise: list[bool]) -> list[int]:
    """The definition, pair by pair: a row is kept unless another row is at least as good in every
    objective and better in one; rows with a NaN are neither kept nor compared."""
    signs = np.where(maximise, -1.0, 1.0)
    kept = []
    for i, row in enumerate(values):
        if np.isnan(row).any():
            continue
        a = row * signs
        dominated = False
        for j, other in enumerate(values):
            if j == i or np.isnan(other).any():
                continue
            b = other * signs
            if all(b[k] <= a[k] for k in range(len(a))) and any(b[k] < a[k] for k in range(len(a))):
                dominated = True
                break
        if not dominated:
            kept.append(i)
    return kept


@pytest.mark.parametrize("n", [0, 1, 2, 7, 40, 300, 700])  # 700: more than one block of rows
@pytest.mark.parametrize("maximise", [[True, False], [False, False], [True, False, False], [False, True, True]])
def test_non_dominated_matches_the_definition_on_random_tables(n: int, maximise: list[bool]) -> None:
    rng = np.random.default_rng(n * 7 + len(maximise))
    # Few distinct values, so that ties in one objective and whole duplicate rows are common.
    values = rng.integers(0, 6, size=(n, len(maximise))).astype(float)
    if n > 2:
        values[rng.choice(n, size=max(1, n // 10), replace=False), rng.integers(0, len(maximise))] = np.nan
        values[1] = values[0]  # an exact duplicate
    found = non_dominated(values, maximise)
    assert found.tolist() == brute_force(values, maximise)
    # On continuous values as well (hardly any ties).
    smooth = rng.normal(size=(n, len(maximise)))
    assert non_dominated(smooth, maximise).tolist() == brute_force(smooth, maximise)


def test_non_dominated_on_a_hand_made_table() -> None:
    # accuracy (max), latency (min)
    values = np.array([
        [0.90, 10.0],  # 0 front: the most accurate
        [0.85, 5.0],   # 1 front
        [0.85, 5.0],   # 2 front: the same point as 1, kept too
        [0.80, 5.0],   # 3 dominated by 1 (same latency, less accurate)
        [0.70, 1.0],   # 4 front: the fastest
        [0.60, 2.0],   # 5 dominated by 4
        [0.90, 12.0],  # 6 dominated by 0 (same accuracy, slower)
        [np.nan, 0.5],  # 7 no accuracy: not on the front, and it dominates nothing
        [0.95, np.nan],  # 8 no latency: the same
    ])
    assert non_dominated(values, [True, False]).tolist() == [0, 1, 2, 4]
    # One objective: the best alone, or all that tie for it (row 8 has an accuracy now).
    assert non_dominated(values[:, :1], [True]).tolist() == [8]
    assert non_dominated(values[:8, :1], [True]).tolist() == [0, 6]
    with pytest.raises(ValueError, match="2 directions for 1 objectives"):
        non_dominated(values[:, :1], [True, False])


# --------------------------------------------------------------------------------------------
# The front of a trials table


METRIC = "val_macro_f1"
# trial: (model, score, n_params, macs, latency_ms, feasible)
TRIALS = {
    "t0": ("resnet1d", 0.90, 90_000, 9e6, 4.0, 1.0),   # the winner: best score
    "t1": ("simple_cnn", 0.85, 9_000, 1e6, 1.0, 1.0),  # on every front
    "t2": ("simple_cnn", 0.80, 12_000, 2e6, 0.5, 1.0),  # the fastest: on the latency front, not the params one
    "t3": ("ecg_cnn", 0.70, 30_000, 3e6, 2.0, 1.0),    # dominated in both
    "t4": ("resnet1d", 0.95, 500_000, 5e7, 0.2, 0.0),  # best and fastest, but infeasible: never on a front
    "t5": ("ecg_cnn", 0.60, 2_000, 5e5, 3.0, 1.0),     # the smallest: on the params front
}


def trial_records(costs: bool = True, metric: str = METRIC) -> list[TrialRecord]:
    records = []
    for trial_id, (model, score, params, macs, latency, feasible) in TRIALS.items():
        final = {metric: score, **({"n_params": params, "macs": macs, "latency_ms": latency, "feasible": feasible}
                                   if costs else {})}
        records.append(TrialRecord(trial_id=trial_id, status="completed", epochs=2,
                                   config={"model": model, "transform": "none", "lr": 0.001}, final=final,
                                   best={metric: score}, best_epoch=2, peak_metrics={metric: score}))
    records.append(TrialRecord(trial_id="t6", status="errored", epochs=0, config={"model": "simple_cnn"}))
    return records


def table_of(records: list[TrialRecord]) -> TrialTable:
    return TrialTable.from_frame(pd.DataFrame([r.flat() for r in records]))


def test_the_front_of_a_table_with_costs() -> None:
    front = pareto_front(table_of(trial_records()), METRIC)
    assert front.objectives == (METRIC, "latency_ms", "n_params") and front.maximise == (True, False, False)
    assert front.missing == () and front.costs == ("n_params", "macs", "latency_ms") and front.has_costs
    table = front.table
    assert table["feasible"].to_dict() == {"t0": True, "t1": True, "t2": True, "t3": True, "t4": False,
                                           "t5": True, "t6": False}
    assert sorted(table.index[table["on_front"]]) == ["t0", "t1", "t2", "t5"]
    assert sorted(table.index[table["on_front_latency_ms"]]) == ["t0", "t1", "t2"]
    assert sorted(table.index[table["on_front_n_params"]]) == ["t0", "t1", "t5"]
    rows = front.csv_rows()
    assert rows["trial_id"].tolist() == ["t0", "t1", "t2", "t5"]  # the best metric first
    assert rows.columns.tolist() == ["trial_id", "feasible", METRIC, "latency_ms", "n_params", "macs", "model",
                                     "transform"]
    assert rows["feasible"].tolist() == [1, 1, 1, 1]
    assert any("1 trial(s) broke" in note for note in front.notes)

    # --objectives: a front over those only, in their own directions.
    two = pareto_front(table_of(trial_records()), METRIC, ["latency_ms", METRIC])
    assert two.objectives == ("latency_ms", METRIC) and two.maximise == (False, True)
    assert sorted(two.table.index[two.table["on_front"]]) == ["t0", "t1", "t2"]
    with pytest.raises(ConfigError, match="'epoch_seconds'"):
        pareto_front(table_of(trial_records()), METRIC, ["epoch_seconds"])


def test_what_each_halving_of_latency_costs() -> None:
    front = pareto_front(table_of(trial_records()), METRIC)
    ladder = halvings(front)
    # From t0 (0.90 at 4 ms): within 2 ms and 1 ms t1, within 0.5 ms t2; nothing feasible within
    # 0.25 ms (t4 is faster but broke a constraint, t6 has no figures).
    assert ladder["trial_id"].tolist() == ["t0", "t1", "t1", "t2"]
    assert ladder["budget"].tolist() == [4.0, 2.0, 1.0, 0.5] and ladder["step"].tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(ladder["change"], [0.0, -0.05, -0.05, -0.10])
    assert halvings(front, "n_params")["trial_id"].tolist() == ["t0", "t1", "t1", "t1", "t5", "t5"]
    # A minimised metric: from the lowest; against a plain loop over the trials.
    loss = pareto_front(table_of(trial_records(True, "val_loss")), "val_loss")
    found = halvings(loss)
    values = {t: (v[1], v[4]) for t, v in TRIALS.items() if v[5] == 1.0}
    start = min(values, key=lambda t: values[t][0])
    budget, expected = values[start][1], []
    while any(lat <= budget for _, lat in values.values()):
        expected.append(min((t for t in values if values[t][1] <= budget), key=lambda t: values[t][0]))
        budget /= 2
    assert found["trial_id"].tolist() == expected
    # Without the cost column: empty.
    assert halvings(pareto_front(table_of(trial_records(costs=False)), METRIC)).empty


def test_hypervolume_against_a_grid_count() -> None:
    front = pareto_front(table_of(trial_records()), METRIC)
    # By hand, along log2 latency from t2's 0.5 ms to the 8-ms ceiling, the best score so far
    # above the 0.5 floor: 1 x 0.30 + 1 x 0.35 + log2(3/2) x 0.35 + log2(4/3) x 0.35 + 1 x 0.40.
    assert hypervolume(front, "latency_ms", 0.5, 8.0) == pytest.approx(1.40, abs=1e-9)
    # Against a count over a fine grid of (log2 latency, score): a point counts when a feasible
    # trial is at least as fast and scores at least as high.
    trials = [(np.log2(v[4]), v[1]) for v in TRIALS.values() if v[5] == 1.0]
    u, y = np.meshgrid(np.linspace(-3, 3, 3001)[:-1] + 0.001, np.linspace(0.5, 1.0, 1001)[:-1] + 0.00025)
    covered = np.zeros(u.shape, dtype=bool)
    for log_latency, score in trials:
        covered |= (u >= log_latency) & (y <= score)
    assert hypervolume(front, "latency_ms", 0.5, 8.0) == pytest.approx(covered.mean() * 6 * 0.5, abs=2e-3)
    # Trials under the floor or over the ceiling add nothing; a minimised metric is turned.
    assert hypervolume(front, "latency_ms", 0.95, 8.0) == 0.0 and hypervolume(front, "latency_ms", 0.5, 0.4) == 0.0
    loss = pareto_front(table_of(trial_records(True, "val_loss")), "val_loss")
    assert hypervolume(loss, "latency_ms", 1.0, 8.0) == pytest.approx(
        1 * 0.20 + 1 * 0.20 + np.log2(1.5) * 0.30 + np.log2(4 / 3) * 0.40 + 1 * 0.40)


def test_benchmark_fronts_compares_run_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one, two = hand_made_run(tmp_path / "one"), hand_made_run(tmp_path / "two")
    two.write_trials([r for r in trial_records() if r.trial_id != "t0"])  # without the best trial
    assert main(["benchmark", "fronts", "--runs", str(one.path), str(two.path), "--out", str(tmp_path / "out")]) == 0
    (written,) = (tmp_path / "out").glob("fronts-*.json")
    result = json.loads(written.read_text())
    assert result["floor"] == 0.6 and result["ceiling"] == pytest.approx(4.0, rel=1e-3)
    first, second = result["runs"]
    assert (first["trials"], first["front"], second["trials"]) == (7, 3, 6)
    assert first["hypervolume"] > second["hypervolume"] > 0  # the run with t0 dominates more
    assert [h["trial_id"] for h in first["halvings"]] == ["t0", "t1", "t1", "t2"]
    assert "| one | 7 | 12 | 3 |" in capsys.readouterr().out
    assert main(["benchmark", "fronts", "--runs", str(tmp_path / "nope")]) == 2


def test_a_table_without_cost_columns_has_a_front_over_the_metric_and_a_note() -> None:
    front = pareto_front(table_of(trial_records(costs=False)), METRIC)
    assert front.objectives == (METRIC,) and front.missing == ("latency_ms", "n_params") and not front.has_costs
    assert not front.feasibility_known and front.table["feasible"].all()  # no constraints recorded
    # One objective: the best trial (t4 is feasible now: no column says otherwise).
    assert front.csv_rows()["trial_id"].tolist() == ["t4"]
    assert "no latency_ms, n_params" in front.notes[0]
    # A minimised metric: the lowest wins.
    assert pareto_front(table_of(trial_records(False, "val_loss")), "val_loss").csv_rows()["trial_id"].tolist() \
        == ["t5"]
    # An empty table: an empty front, no error.
    empty = pareto_front(TrialTable.from_frame(pd.DataFrame()), METRIC)
    assert empty.csv_rows().empty and list(empty.csv_rows().columns)[:1] == ["trial_id"]


def test_objectives_recorded_in_space_json() -> None:
    assert recorded_objectives(None) is None and recorded_objectives({"search": {}}) is None
    assert recorded_objectives({"search": {"objectives": ["val_cinc_f1", "latency_ms"]}}) == ("val_cinc_f1",
                                                                                               "latency_ms")
    assert recorded_objectives({"search": {"objectives": "val_loss, n_params"}}) == ("val_loss", "n_params")


# --------------------------------------------------------------------------------------------
# pareto.csv and report.html of a hand-made run folder


def hand_made_run(path: Path, costs: bool = True) -> RunFolder:
    run = RunFolder(path)
    run.write_trials(trial_records(costs))
    run.write_best(BestConfig(config={"model": "resnet1d", "transform": "none", "lr": 0.001, "epochs": 2, "seed": 0},
                              metrics={METRIC: 0.90}, epoch=2, trial_id="t0", metric=METRIC, data="synthetic:60"))
    return run


def test_the_report_rebuilds_pareto_csv_and_draws_the_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = hand_made_run(tmp_path / "run")
    assert run.pareto() is None  # a run from before pareto.csv
    assert main(["report", "--run", str(run.path)]) == 0
    rows = run.pareto()
    assert rows is not None and rows["trial_id"].tolist() == ["t0", "t1", "t2", "t5"]
    assert rows["latency_ms"].tolist() == [4.0, 1.0, 0.5, 3.0] and rows["n_params"].tolist() == [90_000, 9_000,
                                                                                                   12_000, 2_000]
    assert (run.pareto_path.read_text().splitlines()[1].split(",")[4]) == "90000"  # whole numbers stay whole
    assert run_front(run).csv_rows()["trial_id"].tolist() == rows["trial_id"].tolist()
    page = (run.path / "report.html").read_text()
    assert '<section id="pareto">' in page and "Pareto front not shown" not in page
    for anchor in ("plot-pareto-latency", "plot-pareto-params"):
        assert f'id="{anchor}"' in page
    assert "infeasible (broke a constraint)" in page and '"shape":"hv"' in page and '"type":"log"' in page
    assert 'class="sortable numbers pareto"' in page
    table = page.split('class="sortable numbers pareto"')[1].split("</table>")[0]
    assert table.count("<tr") == 1 + 4 and '<tr class="winner">' in table
    ladder = page.split('id="pareto-halvings"')[1].split("</table>")[0]
    assert ladder.count("<tr") == 1 + 4 and "-0.1000" in ladder
    # An existing pareto.csv is what the page shows: the report does not rewrite it.
    run.write_pareto(rows.head(1))
    write_html_report(run)
    assert run.pareto()["trial_id"].tolist() == ["t0"]  # type: ignore[index]


def test_without_cost_columns_the_section_is_a_note(tmp_path: Path) -> None:
    run = hand_made_run(tmp_path / "run", costs=False)
    write_html_report(run)
    page = (run.path / "report.html").read_text()
    assert "Pareto front not shown: the trials report no cost" in page
    assert '<section id="pareto">' not in page and "plot-pareto" not in page
    rows = run.pareto()
    assert rows is not None and rows["trial_id"].tolist() == ["t4"]  # over the metric alone
    # An older run without trials' config keys or a feasible column still builds.
    page, _ = build_page(run)
    assert "Pareto front not shown" in page


def test_a_damaged_pareto_csv_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = hand_made_run(tmp_path / "run")
    run.pareto_path.write_text("model,score\nx,1\n")
    assert main(["report", "--run", str(run.path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pareto.csv: not a Pareto table" in err[0], err


# --------------------------------------------------------------------------------------------
# A real search: pareto.csv, then refit --trial


DATA = "synthetic:60"
SPACE = """
model: simple_cnn
input_length: 600
batch_size: 16
augmentation: none
transform: {type: choice, values: [none, wavelet]}
wavelet: {type: constant, value: db2, when: {transform: wavelet}}
levels: {type: int, low: 2, high: 3, when: {transform: wavelet}}
lr: {type: float, low: 0.0005, high: 0.01, log: true}
"""


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-trial search of at most 2 epochs, without its refit."""
    from ecg_tune.pipeline import PipelineOptions, run_pipeline
    from ecg_tune.search.plan import SearchOptions

    folder = tmp_path_factory.mktemp("pareto-search")
    space = folder / "space.yaml"
    space.write_text(SPACE)
    out = folder / "run"
    run_pipeline(PipelineOptions(search=SearchOptions(out=out, num_samples=3, max_epochs=2, cv=1, scheduler="fifo"),
                                 space=space, refit=None), dataset=prepare(DATA, progress=False))
    return out


def test_a_search_writes_pareto_csv(searched: Path) -> None:
    run = RunFolder(searched)
    rows = run.pareto()
    assert rows is not None and len(rows) >= 1
    best = run.best()
    assert best.metric in rows.columns and {"trial_id", "feasible", "model", "transform"} <= set(rows.columns)
    assert set(rows["trial_id"]) <= set(run.trial_table().ids)
    # The search's winner is on any front that has its metric as an objective, unless another
    # trial ties it (then both are).
    assert best.trial_id in set(rows["trial_id"]) or np.isclose(rows[best.metric], best.score).any()
    # The page the search wrote: the Pareto section once trials report their costs, else the note.
    page = (searched / "report.html").read_text()
    if "final/latency_ms" in run.trials().columns:
        assert '<section id="pareto">' in page and 'id="plot-pareto-latency"' in page
        assert {"latency_ms", "n_params", "macs"} <= set(rows.columns)
    else:
        assert "Pareto front not shown" in page


def test_refit_trial_delivers_that_trial(searched: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ecg_tune.bundle import load_bundle
    from ecg_tune.config import make_config

    mlflow = pytest.importorskip("mlflow")
    from ecg_tune.runs import TrackingRecord

    run = RunFolder(shutil.copytree(searched, tmp_path / "run"))
    # Tracked as a --mlflow search would be: the refit logs its files, pareto.csv among them.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("test", artifact_location=(tmp_path / "art").as_uri()))
    run.write_tracking(TrackingRecord(tracking_uri=uri, parent_run_id=parent.info.run_id,
                                      experiment_id=parent.info.experiment_id))
    capsys.readouterr()  # MLflow's own lines on creating its tables
    best = run.best()
    table = run.trial_table()
    other = next(t for t in table.ids if t != best.trial_id and not pd.isna(table.info["best_epoch"][t]))

    assert main(["refit", "--run", str(run.path), "--trial", "nosuchtrial"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trial nosuchtrial: no such trial" in err[0] and best.trial_id in err[0], err
    assert not run.report_path.exists()

    assert main(["refit", "--run", str(run.path), "--trial", other, "--no-onnx"]) == 0
    out = capsys.readouterr().out
    assert f"refit: trial {other}, chosen by hand instead of the search's best {best.trial_id}" in out
    report = json.loads(run.report_path.read_text())
    chosen = report["chosen"]
    assert chosen["trial_id"] == other and chosen["by"] == "hand" and chosen["search_best"] == best.trial_id
    assert chosen["feasible"] in (None, True)  # no constraints: None before the cost keys, then every trial meets them
    epoch = int(table.info["best_epoch"][other])
    assert report["epochs"] == epoch and "ensemble" not in report
    assert report["validation"] == {best.metric: pytest.approx(float(table.best[best.metric][other]))}
    # The delivered model is the trial's config (its sampled values), refit for its own epochs.
    sampled = {str(k): v for k, v in table.config.loc[other].items() if not pd.isna(v)}
    delivered = load_bundle(run.model_dir, device="cpu").config
    assert not (run.model_dir / "model.onnx").exists()  # --no-onnx: the torch bundle only
    assert delivered.epochs == epoch and make_config(report["config"]) == delivered
    for key, value in sampled.items():
        if isinstance(value, float):
            assert delivered.value(key) == pytest.approx(value), key
        else:
            assert str(delivered.value(key)) == str(value), key
    assert delivered.value("lr") != pytest.approx(best.config["lr"])  # not the winner's (lr is sampled)
    assert "pareto.csv" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    page = (run.path / "report.html").read_text()
    assert f"trial {other} (chosen by hand)" in page and "chosen by hand (<code>ecg-tune refit --trial" in page


def test_refit_of_an_infeasible_trial_warns_in_one_line(searched: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """trials.csv marks the trial infeasible (as the cost keys will): refit all the same, with a
    one-line warning; report.json says it was infeasible. Only the set-up is run: no training."""
    from ecg_tune.refit import refit_setup

    run = RunFolder(shutil.copytree(searched, tmp_path / "run"))
    frame = run.trials()
    frame["final/feasible"] = 1.0
    target = str(frame["trial_id"].iloc[-1])
    frame.loc[frame["trial_id"].astype(str) == target, "final/feasible"] = 0.0
    frame.to_csv(run.path / "trials.csv", index=False)
    setup = refit_setup(run, target)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: trial {target} broke the run's constraints"), err
    assert setup.chosen is not None and setup.chosen["feasible"] is False
    assert [m.trial_id for m in setup.models] == [target] and setup.best.trial_id == target
    assert setup.ensemble is None
