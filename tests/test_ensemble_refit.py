"""The refit of an ensemble (issue 24, item 5): members refit in parallel, the bundle of bundles,
report.json's `ensemble` object, the page's section and MLflow's metrics; and a run without
ensemble.json (or with the best trial alone in it) refit exactly as before.

One small real search (4 trials of at most 2 epochs on synthetic data, on the module's Ray
cluster, no refit) gives the run folder; each test refits its own copy with an ensemble.json
written by hand through `RunFolder.write_ensemble`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecg_tune.bundle import (
    ENSEMBLE,
    Bundle,
    EnsembleBundle,
    MemberModel,
    load_bundle,
    save_bundle,
    save_ensemble_bundle,
    weighted_mean,
)
from ecg_tune.cli import main
from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.data.records import Records
from ecg_tune.pipeline import PipelineOptions, run_pipeline
from ecg_tune.refit import RefitOptions, refit_setup, run_refit
from ecg_tune.reporting.page import build_page
from ecg_tune.runs import EnsembleMember, EnsembleRecord, RunFolder
from ecg_tune.search.plan import SearchOptions
from ecg_tune.training.network import build_network

# A single model's bundle folder, sorted, as the refits here write it: without the ONNX graph (2-5 s
# each; the team's graph is checked once, in ensemble_run, and test_onnx.py checks every family's).
SINGLE_BUNDLE = ["config.json", "weights.pt"]
NO_GRAPH = RefitOptions(onnx=False)

DATA = "synthetic:60"
# Two branches, so trials.csv leaves conditional keys blank (levels: NaN where transform is none)
# and a member's config must be made whole from it.
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
BASE_KEYS = {"test", "validation", "config", "epochs", "refit_seconds"}


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-trial search without its refit."""
    folder = tmp_path_factory.mktemp("ensemble-search")
    space = folder / "space.yaml"
    space.write_text(SPACE)
    out = folder / "run"
    run_pipeline(PipelineOptions(search=SearchOptions(out=out, num_samples=4, max_epochs=2, cv=1, scheduler="fifo"),
                                 space=space, refit=None), dataset=prepare(DATA, progress=False))
    return out


def copy_run(searched: Path, where: Path, members: dict[str, float] | None) -> RunFolder:
    """A private copy of the search's folder, with an ensemble.json of `members` (None: without one)."""
    run = RunFolder(shutil.copytree(searched, where / "run"))
    run.ensemble_path.unlink(missing_ok=True)
    if members is not None:
        run.write_ensemble(EnsembleRecord(
            members=tuple(EnsembleMember(trial_id=t, weight=w) for t, w in members.items()),
            metric=run.best().metric, rule="chosen by hand for a test", figures={"held_out_ensemble": 0.5}))
    return run


def trial_order(run: RunFolder) -> list[str]:
    """The trial ids, the best first, then the others in trials.csv's order."""
    best = run.best().trial_id
    return [best, *[t for t in run.trial_table().ids if t != best]]


def test_records(run: RunFolder) -> Records:
    dataset = prepare(DATA, split_file=run.split_path, progress=False)
    return dataset.records.subset(dataset.index("test"))


test_records.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@pytest.fixture(scope="module")
def ensemble_run(searched: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunFolder, dict[str, float]]:
    """The search refit as an ensemble of two trials without the best one, which is refit as the
    reference (three Ray tasks: more would only start more worker processes on 2 cores)."""
    run = RunFolder(searched)
    others = trial_order(run)[1:]
    assert len(others) == 3, "the search ran 4 trials"
    members = dict(zip(others[:2], (0.7, 0.3), strict=True))
    copy = copy_run(searched, tmp_path_factory.mktemp("ensemble"), members)
    run_refit(copy)
    return copy, members


def test_the_ensemble_report_names_members_and_the_single_best(ensemble_run) -> None:
    run, members = ensemble_run
    report = json.loads(run.report_path.read_text())
    assert set(report) == BASE_KEYS | {"ensemble"} and report["refit_seconds"] > 0
    ensemble, best = report["ensemble"], run.best()
    assert ensemble["metric"] == best.metric and ensemble["rule"] == "chosen by hand for a test"
    assert ensemble["figures"] == {"held_out_ensemble": 0.5}
    assert [m["trial_id"] for m in ensemble["members"]] == list(members)
    assert sum(m["weight"] for m in ensemble["members"]) == pytest.approx(1.0)
    table = run.trial_table()
    for member in ensemble["members"]:
        assert member["weight"] == members[member["trial_id"]]
        assert member["validation"] == pytest.approx(table.best.loc[member["trial_id"], best.metric])
        assert member["epochs"] == table.info.loc[member["trial_id"], "best_epoch"]
        for key in ("accuracy", "macro_f1", "cinc_f1"):
            low, high = member["test"]["ci95"][key]
            assert low <= member["test"][key] <= high
    single = ensemble["single_best"]
    assert single["trial_id"] == best.trial_id and single["member"] is False
    assert single["validation"] == pytest.approx(best.score) and single["epochs"] == best.epoch
    assert set(single["test"]) == {"accuracy", "macro_f1", "cinc_f1", "ci95"}
    # the single best's config, validation and epochs stay report.json's own, as without an ensemble
    assert report["epochs"] == best.epoch and report["validation"] == pytest.approx(best.metrics)


def test_the_ensemble_bundle_predicts_the_weighted_mean_of_its_members(ensemble_run, tmp_path: Path) -> None:
    run, members = ensemble_run
    model = run.model_dir
    assert sorted(p.name for p in model.iterdir()) == [ENSEMBLE, "members", "model.onnx", "onnx.json"]
    assert sorted(p.name for p in (model / "members").iterdir()) == sorted(members)
    bundle = load_bundle(model, device="cpu")
    assert isinstance(bundle, EnsembleBundle) and [t for t, _, _ in bundle.members] == list(members)
    records = test_records(run)
    alone = {t: load_bundle(model / "members" / t, device="cpu").predict(records) for t in members}
    expected = sum(w * alone[t] for t, w in members.items())
    np.testing.assert_allclose(bundle.predict(records), expected, rtol=1e-12, atol=1e-12)
    # the refit's test predictions are the same combination, and `predict` (the command) gives it
    saved = pd.read_csv(run.path / "test_predictions.csv")
    classes = bundle.classes
    np.testing.assert_allclose(saved[[f"p_{c}" for c in classes]].to_numpy(), expected, atol=1e-6)
    table = tmp_path / "test.parquet"
    pd.DataFrame({"signal": records.signals, "record": records.record_ids, "fs": 300.0}).to_parquet(table)
    assert main(["predict", "--model", str(model), str(table), "--output", str(tmp_path / "out.csv"),
                 "--device", "cpu"]) == 0
    predicted = pd.read_csv(tmp_path / "out.csv")
    assert list(predicted["predicted"]) == list(saved["predicted"])
    np.testing.assert_allclose(predicted[[f"p_{c}" for c in classes]].to_numpy(), expected, atol=2e-6)
    # each member was refit as its trial trained: its own config from trials.csv, its own epochs
    setup = refit_setup(run)
    table_config = run.trial_table().config
    for model_setup in setup.models:
        if model_setup.weight == 0:
            continue
        saved_config = json.loads((model / "members" / model_setup.trial_id / "config.json").read_text())["config"]
        for key, value in table_config.loc[model_setup.trial_id].dropna().items():
            assert saved_config[key] == pytest.approx(value) if isinstance(value, float) else saved_config[key] == value
        assert saved_config["epochs"] == len(model_setup.lr_schedule) == run.trial_table().info.loc[
            model_setup.trial_id, "best_epoch"]


def test_the_page_and_mlflow_show_the_team(ensemble_run, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    from ecg_tune.runs import TrackingRecord
    from ecg_tune.tracking import log_refit

    run, members = ensemble_run
    page, _ = build_page(run)
    section = page.split('id="ensemble"')[1].split("</table>")[0]
    assert all(f"member {t}" in section for t in members)
    assert f"single best {run.best().trial_id} (not a member)" in section and "chosen by hand" in page
    report = run.report()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("test", artifact_location=(tmp_path / "art").as_uri()))
    run.write_tracking(TrackingRecord(tracking_uri=uri, parent_run_id=parent.info.run_id,
                                      experiment_id=parent.info.experiment_id))
    log_refit(run, report["test"], [], ensemble=report["ensemble"], refit_seconds=report["refit_seconds"])
    metrics = client.get_run(parent.info.run_id).data.metrics
    single = report["ensemble"]["single_best"]["test"]
    for key in ("accuracy", "macro_f1", "cinc_f1"):
        assert metrics[f"test_{key}"] == pytest.approx(report["test"][key])
        assert metrics[f"test_single_best_{key}"] == pytest.approx(single[key])
        assert metrics[f"test_single_best_{key}_ci_low"] == pytest.approx(single["ci95"][key][0])
    assert metrics["ensemble_members"] == len(members) and metrics["refit_seconds"] == report["refit_seconds"]


@pytest.mark.parametrize("damage,named", [
    (lambda model: (model / ENSEMBLE).write_text("{not json"), ENSEMBLE),
    (lambda model: (model / ENSEMBLE).write_text(
        (model / ENSEMBLE).read_text().replace('"weight": 0.7', '"weight": 0.9')), ENSEMBLE),
    (lambda model: (model / ENSEMBLE).write_text(
        (model / ENSEMBLE).read_text().replace('"members": [', '"members": [{"trial_id": "../x", "weight": 0.1}, ')
        .replace('"weight": 0.7', '"weight": 0.6')),  # the weights still sum to 1: the name is what is wrong
     ENSEMBLE),
    (lambda model: shutil.rmtree(next((model / "members").iterdir())), "config.json"),
    (lambda model: next((model / "members").iterdir()).joinpath("weights.pt").write_bytes(b"cut"), "weights.pt"),
], ids=["not-json", "weights-off", "path-outside", "member-missing", "member-weights-damaged"])
def test_a_damaged_ensemble_bundle_is_one_line_naming_the_file(ensemble_run, tmp_path: Path, damage, named: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = ensemble_run
    model = Path(shutil.copytree(run.model_dir, tmp_path / "model"))
    damage(model)
    inputs = tmp_path / "in.parquet"
    pd.DataFrame({"signal": [np.zeros(900, np.float32)], "fs": 300.0}).to_parquet(inputs)
    assert main(["predict", "--model", str(model), str(inputs), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines


def test_without_ensemble_json_or_with_the_best_alone_the_refit_is_as_before(ensemble_run, searched: Path,
                                                                             tmp_path: Path) -> None:
    # A folder an ensemble refit left: a later refit without ensemble.json replaces its bundle.
    before = copy_run(ensemble_run[0].path, tmp_path / "none", None)
    assert (before.model_dir / ENSEMBLE).is_file()
    plain = run_refit(before, NO_GRAPH)  # also: the team's graph, now stale, is gone
    assert sorted(p.name for p in before.model_dir.iterdir()) == SINGLE_BUNDLE
    assert isinstance(load_bundle(before.model_dir, device="cpu"), Bundle)
    report = json.loads(before.report_path.read_text())
    assert set(report) == BASE_KEYS and report["epochs"] == before.best().epoch

    alone = copy_run(searched, tmp_path / "best-alone", {before.best().trial_id: 1.0})
    kept = run_refit(alone, NO_GRAPH)
    assert set(kept.report) == BASE_KEYS | {"ensemble"}
    for key in ("test", "validation", "config", "epochs"):  # the same model, refit the same way
        assert kept.report[key] == plain.report[key], key
    assert kept.report["ensemble"]["single_best"]["member"] is True
    assert sorted(p.name for p in alone.model_dir.iterdir()) == SINGLE_BUNDLE
    records = test_records(alone)
    np.testing.assert_array_equal(load_bundle(alone.model_dir, device="cpu").predict(records),
                                  load_bundle(before.model_dir, device="cpu").predict(records))


def test_one_member_other_than_the_best_is_delivered_alone_beside_the_reference(searched: Path,
                                                                                 tmp_path: Path) -> None:
    order = trial_order(RunFolder(searched))
    run = copy_run(searched, tmp_path, {order[1]: 1.0})
    report = run_refit(run, NO_GRAPH).report
    ensemble = report["ensemble"]
    assert [m["trial_id"] for m in ensemble["members"]] == [order[1]] and ensemble["single_best"]["member"] is False
    assert {k: report["test"][k] for k in ensemble["members"][0]["test"]} == ensemble["members"][0]["test"]
    assert sorted(p.name for p in run.model_dir.iterdir()) == SINGLE_BUNDLE  # a single model
    bundle = load_bundle(run.model_dir, device="cpu")
    assert isinstance(bundle, Bundle) and bundle.config.epochs == ensemble["members"][0]["epochs"]
    assert f"trial {order[1]} (chosen after the search)" in run.path.joinpath("report.html").read_text()


def test_a_member_config_from_trials_csv_is_the_best_config_for_the_best_trial(searched: Path) -> None:
    from ecg_tune.refit import _member_trial

    run = RunFolder(searched)
    best = run.best()
    # The best trial rebuilt as a member is: same config as best_config.json, same epoch and score.
    rebuilt = _member_trial(best, run.trial_table(), best.trial_id, where="test")
    assert make_config(rebuilt.config) == make_config(best.config)
    assert rebuilt.epoch == best.epoch and rebuilt.score == pytest.approx(best.score)


def test_ensemble_bundles_round_trip_without_a_search(tmp_path: Path) -> None:
    """save_ensemble_bundle + load_bundle on hand-made networks of different shapes."""
    torch.manual_seed(0)
    classes = ["A", "N", "O"]
    members = []
    for trial_id, weight, values in (("t1", 0.25, {"model": "simple_cnn"}),
                                     ("t2", 0.75, {"model": "ecg_cnn", "transform": "wavelet", "levels": 2})):
        config = make_config(values)
        members.append(MemberModel(trial_id, weight, build_network(config, 256 if trial_id == "t1" else 300, 3),
                                   None, config))
    folder = save_ensemble_bundle(tmp_path / "model", members, classes, 300.0, onnx=False)
    rng = np.random.default_rng(1)
    records = Records(signals=[rng.normal(size=n).astype(np.float32) for n in (200, 256, 700)], labels=None,
                      classes=classes, record_ids=["a", "b", "c"], fs=300.0, source="x")
    each = [load_bundle(folder / "members" / m.trial_id, device="cpu").predict(records) for m in members]
    loaded = load_bundle(folder, device="cpu")
    np.testing.assert_allclose(loaded.predict(records), 0.25 * each[0] + 0.75 * each[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(weighted_mean([each[0]], [1.0]), each[0])
    # a single model written over it leaves a single-model bundle, as older refits wrote
    save_bundle(folder, members[0].network, None, members[0].config, classes, 300.0, onnx=False)
    assert sorted(p.name for p in folder.iterdir()) == SINGLE_BUNDLE
    np.testing.assert_array_equal(load_bundle(folder, device="cpu").predict(records), each[0])


@pytest.mark.parametrize("nodes,tasks,expected", [
    ([2.0], 1, 2.0),  # one model: the machine, not one core of it
    ([16.0, 4.0], 1, 16.0),  # within the largest node
    ([2.0], 2, 1.0),
    ([2.0], 3, 0.6666),  # 3 on 2 CPUs: all at once (1.5 model-times), not 2 + 1 (2 model-times)
    ([2.0], 5, 0.5),  # at most two tasks to a CPU; the fifth waits
    ([8.0], 3, 2.0),  # room for all: the spare CPUs as threads
    ([4.0, 4.0], 2, 4.0),
    ([2.0, 2.0, 2.0, 2.0], 2, 2.0),  # never more than one node has
    ([4.0, 2.0], 2, 2.0),  # both at once: 3 each would fit on the 4-CPU node only
])
def test_refit_tasks_share_the_cluster(monkeypatch: pytest.MonkeyPatch, nodes: list[float], tasks: int,
                                       expected: float) -> None:
    import ray

    from ecg_tune.refit import _cpus_per_task

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": sum(nodes)})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": n}} for n in nodes])
    assert _cpus_per_task(1.0, tasks) == expected
