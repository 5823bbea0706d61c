"""The `precision` option (training/precision.py, issue 25): the rule with stubbed capability and
timings, bf16 runs of every model family (float32 weights, statistics, checkpoints and head
features), auto resolving to fp32 as the fp32 run bit for bit, resume and refit keeping the
resolved precision, the reported key, the export and the benchmark's plumbing.

bf16 runs stub the capability (`loop.fast_bf16`): autocast runs on any CPU, and the suite must
not depend on the machine's AVX512-BF16. Runs are compared bit for bit (torch.equal): one CPU,
one thread count, every random draw from (seed, epoch).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecg_tune.cli import main
from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.models import MODELS
from ecg_tune.models.ridge import RidgeHead
from ecg_tune.models.svm import SVMStage
from ecg_tune.refit import refit_setup
from ecg_tune.runs import BestConfig, EnsembleMember, EnsembleRecord, RunFolder, TrialRecord
from ecg_tune.search.export import trial_records, write_results
from ecg_tune.search.space_file import load_space
from ecg_tune.training import loop, precision
from ecg_tune.training.evaluate import record_probabilities
from ecg_tune.training.folds import fit_folds
from ecg_tune.training.loop import fit
from ecg_tune.training.precision import StepCost, decide, fast_bf16, reported_precision
from ecg_tune.training.reported import BF16, combine_folds, describe_key, exported, tracked

CPU = torch.device("cpu")
TIMINGS = ("train_samples_per_s", "epoch_seconds")
TRAIN_RECORDS, VAL_RECORDS = 16, 3
# BatchNorm (running statistics) and dropout (random draws): what the measurement must not move.
RESNET = {"model": "resnet1d", "width": 8, "depth": 2, "dropout": 0.3}
# Few features, few windows per record (a longer input): a quick closed-form fit.
ROCKET = {"model": "minirocket", "rocket_features": 84, "rocket_max_dilations": 2, "input_length": 3000}


@pytest.fixture(scope="module")
def dataset():
    return prepare("synthetic:60", progress=False)


@pytest.fixture
def capable(monkeypatch):
    """A device with fast bf16, whatever this machine's CPU."""
    monkeypatch.setattr(loop, "fast_bf16", lambda device: True)


def stub_cost(monkeypatch, cost: StepCost | None) -> list[StepCost]:
    """auto's measurement replaced by `cost` (None: measuring fails the test); returns the calls."""
    calls: list[StepCost] = []

    def measured(*args, **kwargs) -> StepCost:
        assert cost is not None, "auto measured a run that should not measure"
        calls.append(cost)
        return cost

    monkeypatch.setattr(loop, "measure", measured)
    return calls


def tiny(**values):
    # precision auto unless given (the default): what these tests are about
    return make_config({"model": "simple_cnn", "input_length": 600, "batch_size": 8, "epochs": 1,
                        "augmentation": "none", "seed": 3, "precision": "auto", **values})


def run(config, dataset, *, val=True, until: int | None = None, **kwargs) -> list:
    """Every epoch's result, each a snapshot (a deep copy of the network, the state saved and read
    back as the trainable does)."""
    results = fit(config, dataset.tensors, dataset.index("train")[:TRAIN_RECORDS],
                  dataset.index("val")[:VAL_RECORDS] if val else None, device="cpu", **kwargs)
    return [dataclasses.replace(r, network=copy.deepcopy(r.network), _state=saved(r.state()))
            for r in itertools.islice(results, until)]


def saved(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_run(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.metrics.items() if k not in TIMINGS} == \
               {k: v for k, v in y.metrics.items() if k not in TIMINGS}
        for key, value in x.network.state_dict().items():
            assert torch.equal(value, y.network.state_dict()[key]), key
        for key, moments in x.state()["optimizer"]["state"].items():
            for name, value in moments.items():
                assert torch.equal(value, y.state()["optimizer"]["state"][key][name]), (key, name)


def float_tensors(value) -> list[torch.Tensor]:
    """Every floating-point tensor nested in a checkpoint."""
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [t for item in value.values() for t in float_tensors(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in float_tensors(item)]
    return []


# -- the rule ----------------------------------------------------------------------------------

def test_the_rule_with_stubbed_capability_and_timings() -> None:
    asked: list[int] = []

    def cost(flops=1e12, fp32=0.2, bf16=0.1):
        return lambda: asked.append(1) or StepCost(flops, fp32, bf16)

    def rule(wanted, *, capable=True, stepped=True, steps=precision.MIN_EPOCH_STEPS, **timing):
        return decide(wanted, CPU, stepped=stepped, capable=capable, epoch_steps=steps, cost=cost(**timing))

    assert rule("auto", capable=False) == "fp32" and not asked  # no fast bf16: nothing is timed
    assert rule("auto") == "bf16" and len(asked) == 1  # 2x faster
    assert rule("auto", bf16=0.21) == "fp32"  # slower
    assert rule("auto", bf16=0.19) == "fp32"  # 5 % faster: within the margin
    assert rule("auto", bf16=0.2 * (1 - precision.MARGIN)) == "bf16"
    assert rule("auto", flops=precision.MIN_FORWARD_FLOPS / 2, fp32=None, bf16=None) == "fp32"  # too small to time
    asked.clear()
    assert rule("auto", steps=precision.MIN_EPOCH_STEPS - 1) == "fp32" and not asked  # measuring would cost too much
    assert rule("fp32") == "fp32" and rule("bf16") == "bf16" and not asked  # explicit: honoured, untimed
    assert rule("bf16", stepped=False) == rule("auto", stepped=False) == "fp32"  # no step to autocast
    with pytest.raises(ConfigError, match=r"^precision: bf16 needs a device with fast bf16 .* cpu has none"):
        rule("bf16", capable=False)
    assert reported_precision(1.0) == "bf16" and reported_precision(0.0) == reported_precision(0.5) == "fp32"


def test_capability_is_torchs_report(monkeypatch) -> None:
    for flags, expected in (({"avx512_bf16": True}, True), ({"amx_bf16": True, "avx512_bf16": False}, True),
                            ({"avx2": True}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda flags=flags: flags)
        assert fast_bf16(CPU) is expected
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kwargs: seen.update(kwargs) or True)
    assert fast_bf16(torch.device("cuda:0")) and seen == {"including_emulation": False}
    assert not fast_bf16(torch.device("mps"))


def test_the_key_is_validated_searchable_and_declared(tmp_path: Path) -> None:
    assert make_config({}).precision == "auto"  # measured never slower than fp32 (docs/benchmarks.md)
    with pytest.raises(ConfigError, match="precision: Input should be 'fp32', 'bf16' or 'auto'"):
        make_config({"precision": "fp16"})
    path = tmp_path / "space.yaml"
    path.write_text("precision: {type: choice, values: [fp32, bf16]}\n")
    assert list(load_space(path).parameters) == ["precision"]
    path.write_text("precision: {type: choice, values: [fp16]}\n")
    with pytest.raises(ConfigError, match="precision"):
        load_space(path)
    row = describe_key(BF16)
    assert row is not None and row.kind == "execution" and exported(BF16) and tracked(BF16)
    assert combine_folds([{BF16: 1.0}, {BF16: 0.0}]) == {BF16: 0.5}  # the share of folds in bf16


# -- bf16 runs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [*({"model": name} for name in MODELS.names()), {**ROCKET, "rocket_head": "ridge"}],
                         ids=[*MODELS.names(), "minirocket_ridge"])
def test_a_bf16_run_trains_and_keeps_float32(dataset, capable, monkeypatch, options: dict) -> None:
    if options["model"] == "minirocket":
        options = {**ROCKET, **options}
    stepped = options.get("rocket_head") != "ridge"
    features: list[np.dtype] = []
    for head in (SVMStage, RidgeHead):
        original = head.fit
        monkeypatch.setattr(head, "fit", lambda self, x, *a, _fit=original, **k: features.append(x.dtype)
                            or _fit(self, x, *a, **k))
    forward: list[torch.dtype] = []
    original_step = loop.train_step

    def step(model, *args):  # the dtype of the model's output inside the step: autocast at work
        handle = model.register_forward_hook(lambda module, inputs, output: forward.append(output.dtype))
        try:
            return original_step(model, *args)
        finally:
            handle.remove()

    monkeypatch.setattr(loop, "train_step", step)
    (result,) = run(tiny(**options, precision="bf16", width=8, depth=2), dataset)
    assert np.isfinite(result.metrics["train_loss"]) and np.isfinite(result.metrics["val_loss"])
    assert result.metrics[BF16] == float(stepped) and result.state()["precision"] == ("bf16" if stepped else "fp32")
    assert set(forward) == ({torch.bfloat16} if stepped else set())
    state = result.network.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    if options["model"] in ("resnet1d", "ecg_cnn"):  # BatchNorm's running statistics
        assert any(key.endswith("running_var") for key in state)
    assert {t.dtype for t in float_tensors(result.state())} == {torch.float32}  # weights, optimiser, average
    heads = {"cnn_svm": 1, "minirocket": 0 if stepped else 1}.get(options["model"], 0)
    assert features == [np.dtype(np.float32)] * heads  # fitted on fp32 features
    # Validated in the run's precision (the head, if kept apart, on float32 copies of the features).
    ran = "bf16" if stepped else "fp32"
    validated, _ = record_probabilities(result.network, result.head, dataset.tensors,
                                        dataset.index("val")[:VAL_RECORDS], "zscore", 0.5, CPU, ran)
    np.testing.assert_array_equal(validated, result.val_probabilities)
    assert validated.dtype == np.float64 and np.isfinite(validated).all()


def test_bf16_asked_without_fast_bf16_is_a_one_line_error(dataset, monkeypatch) -> None:
    monkeypatch.setattr(loop, "fast_bf16", lambda device: False)
    with pytest.raises(ConfigError, match="^precision: bf16 needs a device with fast bf16"):
        run(tiny(precision="bf16"), dataset)
    stub_cost(monkeypatch, None)
    assert run(tiny(), dataset)[0].metrics[BF16] == 0.0  # auto: fp32, nothing measured


def test_auto_resolving_to_fp32_is_the_fp32_run_bit_for_bit(dataset, capable, monkeypatch) -> None:
    # Measured for real (every model timed, bf16 never winning): the copies must leave the run's
    # weights, running statistics, optimiser and random streams as they were.
    monkeypatch.setattr(precision, "MIN_FORWARD_FLOPS", 0.0)
    monkeypatch.setattr(precision, "MIN_EPOCH_STEPS", 0)
    monkeypatch.setattr(precision, "MARGIN", 1.0)
    costs: list[StepCost] = []
    measure = loop.measure
    monkeypatch.setattr(loop, "measure", lambda *args: costs.append(measure(*args)) or costs[-1])
    config = tiny(**RESNET, epochs=2, ema_decay=0.5)
    auto = run(config, dataset)
    assert len(costs) == 1 and costs[0].bf16 is not None and costs[0].fp32 is not None
    assert [r.metrics[BF16] for r in auto] == [0.0, 0.0]
    assert_same_run(auto, run(config.with_updates(precision="fp32"), dataset))


def test_auto_measured_faster_runs_bf16_and_resume_and_refit_keep_it(dataset, capable, monkeypatch) -> None:
    monkeypatch.setattr(precision, "MIN_EPOCH_STEPS", 0)
    calls = stub_cost(monkeypatch, StepCost(1e12, fp32=0.2, bf16=0.1))
    config = tiny(**RESNET, epochs=3)
    straight = run(config, dataset)
    assert len(calls) == 1 and [r.metrics[BF16] for r in straight] == [1.0] * 3
    assert_same_run(straight, run(config.with_updates(precision="bf16"), dataset))  # auto's bf16 is bf16's
    # Resumed where measuring again would say fp32: it keeps the checkpoint's bf16, bit for bit.
    stub_cost(monkeypatch, StepCost(1e12, fp32=0.2, bf16=0.3))
    resumed = run(config, dataset, resume=straight[0].state())
    assert_same_run(resumed, straight[1:])
    # A checkpoint from before the option ran in fp32, and resumes so.
    old = {k: v for k, v in straight[0].state().items() if k != "precision"}
    stub_cost(monkeypatch, None)
    assert [r.metrics[BF16] for r in run(config, dataset, resume=old, until=1)] == [0.0]
    # The refit: the trial's precision and rates replayed, no validation; on the trial's records it
    # delivers the trial's weights at its best epoch, bit for bit.
    best = 2
    refit = run(config.with_updates(precision="bf16", epochs=best), dataset, val=False,
                lr_schedule=straight[best - 1].state()["lr_history"], head_last_epoch_only=True)
    for key, value in refit[-1].network.state_dict().items():
        assert torch.equal(value, straight[best - 1].network.state_dict()[key]), key


def test_folds_resolve_auto_once_and_every_fold_runs_it(dataset, capable, monkeypatch) -> None:
    """Under cross-validation the first fold measures and the others take its choice: a trial is
    all bf16 or all fp32 (what the refit replays), at one measurement's cost, not K."""
    monkeypatch.setattr(precision, "MIN_EPOCH_STEPS", 0)
    calls = stub_cost(monkeypatch, StepCost(1e12, fp32=0.2, bf16=0.1))
    rows = np.concatenate([dataset.index("train")[:TRAIN_RECORDS], dataset.index("val")[:VAL_RECORDS]])
    folds = [(np.setdiff1d(rows, part), part) for part in np.array_split(rows, 3)]
    epochs = list(fit_folds(tiny(**RESNET, epochs=2), dataset.tensors, folds, device="cpu"))
    assert len(calls) == 1
    assert [e.metrics[BF16] for e in epochs] == [1.0, 1.0]
    assert [r.metrics[BF16] for e in epochs for r in e.folds] == [1.0] * 6


def test_train_says_bf16_on_its_epoch_lines(capable, capsys) -> None:
    assert main(["train", "--data", "synthetic:40", "--epochs", "2", "--set", "model=simple_cnn",
                 "--set", "input_length=600", "--set", "precision=bf16"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and all(line.endswith("  bf16") for line in lines)
    assert main(["train", "--data", "synthetic:40", "--epochs", "1", "--set", "model=simple_cnn",
                 "--set", "input_length=600", "--set", "precision=fp32"]) == 0
    assert "bf16" not in capsys.readouterr().out


# -- export and refit --------------------------------------------------------------------------

def result(trial_id: str, bf16: list[float] | None, scores: list[float]) -> types.SimpleNamespace:
    """A Tune result as export.py reads it: the history, the last metrics, no checkpoint folder."""
    history = pd.DataFrame({"training_iteration": range(1, len(scores) + 1), "val_macro_f1": scores,
                            "train_loss": [1.0] * len(scores), **({BF16: bf16} if bf16 is not None else {})})
    return types.SimpleNamespace(metrics_dataframe=history, metrics={"trial_id": trial_id, "finished": True},
                                 path="", error=None, config={"model": "simple_cnn", "lr": 0.01})


def test_the_export_writes_what_ran_and_the_refit_replays_it(dataset, tmp_path: Path) -> None:
    records = trial_records([result("a", [1.0, 1.0], [0.4, 0.6]), result("b", [0.0], [0.5])], "val_macro_f1", 2)
    assert records[0].final[BF16] == 1.0 and BF16 not in records[0].best and BF16 not in records[0].peak_metrics
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.write_split(dataset)
    best = write_results([result("a", [1.0, 1.0], [0.4, 0.6]), result("b", [0.0], [0.5])], run, "val_macro_f1",
                         max_epochs=2, seed=0, data="synthetic:60")
    assert best.trial_id == "a" and best.config["precision"] == "bf16" and run.best().config["precision"] == "bf16"
    assert run.trial_table().final[BF16].to_dict() == {"a": 1.0, "b": 0.0}
    setup = refit_setup(run)
    assert setup.config.precision == "bf16"
    # An ensemble member's precision comes from trials.csv, as the best config's from the export.
    run.write_ensemble(EnsembleRecord(members=(EnsembleMember(trial_id="b", weight=1.0),), metric="val_macro_f1",
                                      rule="by hand", figures={}))
    assert {m.trial_id: m.config.precision for m in refit_setup(run).models} == {"b": "fp32", "a": "bf16"}
    # A search from before the option: no precision anywhere, every trial ran in fp32.
    run.ensemble_path.unlink()
    run.write_trials([TrialRecord("a", "completed", 2, {"model": "simple_cnn"}, best_epoch=2)])
    run.write_best(BestConfig(config={"model": "simple_cnn", "epochs": 2, "seed": 0}, metrics={"val_macro_f1": 0.6},
                              epoch=2, trial_id="a", metric="val_macro_f1", data="synthetic:60"))
    assert refit_setup(run).config.precision == "fp32"


# -- the benchmark -----------------------------------------------------------------------------

def test_the_benchmark_measures_every_precision_and_parses(dataset, monkeypatch) -> None:
    from ecg_tune.benchmarks import precision as benchmark
    from ecg_tune.benchmarks.common import thin
    from ecg_tune.benchmarks.run import BenchmarkOptions
    from ecg_tune.cli import build_parser, options_from_args

    monkeypatch.setattr(benchmark, "cases", lambda data: [
        ("tiny", {"model": "simple_cnn", "input_length": 600, "batch_size": 8, "augmentation": "none"}),
        ("rocket", {**ROCKET, "rocket_head": "ridge", "input_length": 600})])
    small = thin(dataset, 30)
    threads = torch.get_num_threads()
    try:
        outcome = benchmark.run_precision_benchmark(small, epochs=1, log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    tiny_row, rocket_row = outcome["rows"]
    assert set(tiny_row["runs"]) == {"fp32", "bf16", "auto"} and set(rocket_row["runs"]) == {"auto"}
    assert rocket_row["auto_ran"] == "fp32" and tiny_row["forward_mflop"] > 0
    text = benchmark.table(outcome)
    assert "| tiny | 1 x 600 |" in text and "(no step: fp32)" in text
    args = build_parser().parse_args(["benchmark", "precision", "--quick", "--rounds", "2", "--accuracy"])
    options = options_from_args(BenchmarkOptions, args)
    assert (options.benchmark, options.rounds, options.accuracy, options.seeds) == ("precision", 2, True, 3)
