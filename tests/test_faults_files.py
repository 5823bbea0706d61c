"""Faults that lose nothing (issue 16): damaged or hand-edited files.

Every file a run leaves and a later command reads (split.csv, best_config.json, model/config.json,
model/weights.pt, model/svm.skops) is hit by a grid of corruptions as a user would produce them:
cut short, emptied, replaced by something else, fields of the wrong type or out of range, keys
missing, rows repeated or unknown, weights of the wrong shapes, pickles that would run code. Each
must give exit code 2 and one line on stderr naming the file, without a traceback, and nothing may
run code. A damaged Parquet cache entry is re-read from its source with a warning. Bundles in the
layouts earlier versions wrote still load and predict the same.

The default run builds one run folder per module in-process with the writers a search uses
(RunFolder, save_split, save_bundle after one cnn_svm epoch) and drives `ecg-tune` through
`cli.main` in this process (the same parsing, commands and error handling; a check that let a
damaged file through is caught before any training starts); predict's and refit's scripts run as
processes once each. The slow tests add train's script and a real search's run folder, damaged
once per file kind, through the scripts.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ecg_tune.bundle import at_rate, load_bundle, save_bundle
from ecg_tune.cli import main
from ecg_tune.config import make_config
from ecg_tune.data import cache, load, prepare
from ecg_tune.data.records import Records
from ecg_tune.data.split import load_split, split_digest
from ecg_tune.errors import DataError
from ecg_tune.models.svm import SVMStage
from ecg_tune.runs import BestConfig, RunFolder
from ecg_tune.training.loop import fit
from ecg_tune.training.network import build_network

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:60"
VALUES = {"model": "cnn_svm", "transform": "none", "augmentation": "none", "input_length": 1500,
          "epochs": 1, "seed": 0}
INPUTS = "inputs.parquet"  # the run's test records, as a table predict reads
# Whether runs.py records the split's digest with the best config (the refit's check of split.csv).
RECORDS_SPLIT_DIGEST = "split_digest" in BestConfig.__dataclass_fields__


# --- the run folder -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run as the search and refit leave it: split.csv, best_config.json and a cnn_svm
    model/ (one epoch on train + val), plus the test records as a table to predict."""
    out = tmp_path_factory.mktemp("faults") / "run"
    dataset = prepare(DATA, progress=False)
    run = RunFolder(out)
    run.write_split(dataset)
    digest = {"split_digest": split_digest(dataset.records, dataset.split)} if RECORDS_SPLIT_DIGEST else {}
    run.write_best(BestConfig(config=VALUES, metrics={"val_cinc_f1": 0.3, "val_loss": 1.2}, epoch=1,
                              trial_id="t0001", metric="val_cinc_f1", data=DATA, **digest))
    config = make_config(VALUES)
    (result,) = fit(config, dataset.tensors, dataset.index("train", "val"), None, device="cpu",
                    head_last_epoch_only=True)
    save_bundle(run.model_dir, result.network, result.head, config, dataset.records.classes, dataset.records.fs,
                onnx=False)
    test = dataset.records.subset(dataset.index("test"))
    pd.DataFrame({"signal": [np.asarray(s) for s in test.signals], "record": test.record_ids,
                  "fs": 300.0}).to_parquet(out / INPUTS)
    return out


@pytest.fixture
def run(run_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the run folder for one case to damage."""
    return Path(shutil.copytree(run_folder, tmp_path / "run"))


class Reached(Exception):
    """Training was about to start: the damaged file was accepted."""


@pytest.fixture(autouse=True)
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    # A check that lets a damaged file through would otherwise start Ray or train here.
    def reached(*args: object, **kwargs: object) -> None:
        raise Reached()

    monkeypatch.setattr("ecg_tune.refit.train_and_predict", reached)
    monkeypatch.setattr("ecg_tune.training.run.train_one", reached)


COMMANDS: dict[str, Callable[[Path], list[str]]] = {
    "predict": lambda run: ["predict", "--model", str(run / "model"), str(run / INPUTS), "--device", "cpu"],
    "refit": lambda run: ["refit", "--run", str(run)],
    "train": lambda run: ["train", "--config", str(run / "best_config.json"), "--device", "cpu"],
}


def one_line_error(command: str, run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The command's one error line (exit code 2, nothing else on stderr)."""
    code = main(COMMANDS[command](run))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --- corruptions, as a user produces them ---------------------------------------------------

def edit_json(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        content = json.loads(path.read_text())
        change(content)
        path.write_text(json.dumps(content, indent=2))
    return corrupt


def edit_lines(change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
    return corrupt


def write(content: str | bytes) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return corrupt


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def remove(path: Path) -> None:
    path.unlink()


RANDOM = np.random.default_rng(16).bytes(4096)
BINARY = b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # not text in any UTF
MARKER = "ran-code"  # a file the malicious payloads would create in the case's folder


class Payload:
    """Creates the marker file when unpickled: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def malicious_pickle(path: Path) -> None:
    payload = pickle.dumps(Payload(path.parent / MARKER))
    pickle.loads(payload)  # the payload works: unpickled, it creates the marker ...
    (path.parent / MARKER).unlink()  # ... which the loader under test must never do
    path.write_bytes(payload)


def malicious_torch_file(path: Path) -> None:
    torch.save({"model.head.weight": Payload(path.parent / MARKER)}, path)


def edit_state(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
    return corrupt


def other_model_weights(path: Path) -> None:
    network = build_network(make_config({"model": "resnet1d", "depth": 2, "input_length": 1500}), 1500, 4)
    torch.save(network.state_dict(), path)


def skops_of(state: object) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        import skops.io as sio

        path.write_bytes(sio.dumps(state))
    return corrupt


def untrusted_svm(path: Path) -> None:
    import skops.io as sio

    path.write_bytes(sio.dumps(Payload(path.parent / MARKER)))


def function_in_svm(path: Path) -> None:
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    path.write_bytes(sio.dumps({"pipeline": Pipeline([("f", FunctionTransformer(os.system))]), "temperature": 1.0,
                                "n_classes": 4, "classes": [0, 1, 2, 3], "params": {}}))


def svm_on(features: int, classes: int) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        rng = np.random.default_rng(0)
        stage = SVMStage().fit(rng.normal(size=(40, features)), np.arange(40) % classes, n_classes=classes)
        path.write_bytes(stage.to_bytes())
    return corrupt


def svm_state(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        import skops.io as sio

        state = sio.loads(path.read_bytes())
        change(state)
        path.write_bytes(sio.dumps(state))
    return corrupt


def move_record(source: str, target: str) -> Callable[[Path], None]:
    """The first record of part `source` put into part `target`."""
    def change(lines: list[str]) -> list[str]:
        first = next(i for i, line in enumerate(lines) if line.endswith("," + source))
        lines[first] = lines[first].rpartition(",")[0] + "," + target
        return lines
    return edit_lines(change)


# --- model/config.json ----------------------------------------------------------------------

def set_config(**values: object) -> Callable[[Path], None]:
    return edit_json(lambda meta: meta["config"].update(values))


def set_preprocessing(**values: object) -> Callable[[Path], None]:
    return edit_json(lambda meta: meta["preprocessing"].update(values))


CONFIG_CASES = [
    pytest.param(write(""), "config.json", "not valid JSON", id="empty"),
    pytest.param(cut_short, "config.json", "not valid JSON", id="truncated"),
    pytest.param(write("config:\n  model: cnn_svm\n"), "config.json", "not valid JSON", id="yaml-not-json"),
    pytest.param(write(BINARY), "config.json", "not a text file", id="binary"),
    pytest.param(write("[1, 2, 3]"), "config.json", "expected a JSON object", id="a-list"),
    pytest.param(set_config(transform="wavelet", levels=-3), "config.json", "levels: must be at least 1, got -3",
                 id="levels-negative"),
    pytest.param(set_config(batch_size="many"), "config.json", "batch_size: Input should be a valid integer",
                 id="string-for-int"),
    pytest.param(set_config(model="vgg"), "config.json", "unknown model 'vgg'", id="unknown-model"),
    pytest.param(set_config(colour="red"), "config.json", "colour: unknown key", id="unknown-key"),
    pytest.param(edit_json(lambda meta: meta.pop("config")), "config.json", "config: Field required",
                 id="no-config"),
    pytest.param(edit_json(lambda meta: meta.pop("classes")), "config.json", "classes: Field required",
                 id="no-classes"),
    pytest.param(edit_json(lambda meta: meta.update(classes="NAO~")), "config.json",
                 "classes: Input should be a valid list", id="classes-a-string"),
    pytest.param(edit_json(lambda meta: meta.update(classes=["N", "N", "O", "~"])), "config.json", "names repeat",
                 id="classes-repeat"),
    pytest.param(edit_json(lambda meta: meta.update(classes=["N", "A"])), "weights.pt",
                 "does not fit the network config.json describes", id="classes-fewer"),
    pytest.param(edit_json(lambda meta: meta.update(fs="fast")), "config.json", "fs: Input should be a valid number",
                 id="fs-string"),
    pytest.param(edit_json(lambda meta: meta.update(fs=-300)), "config.json", "fs: must be positive", id="fs-negative"),
    pytest.param(set_preprocessing(input_length=1500.5), "config.json", "input_length: Input should be a valid integer",
                 id="input-length-fraction"),
    pytest.param(set_preprocessing(input_length=3000), "config.json", "preprocessing: input_length is 3000",
                 id="input-length-edited"),
    pytest.param(set_preprocessing(normalisation="none"), "config.json", "preprocessing: normalisation is 'none'",
                 id="normalisation-edited"),
    pytest.param(edit_json(lambda meta: meta["preprocessing"].pop("windowing")), "config.json",
                 "preprocessing: windowing: Field required", id="no-windowing"),
    pytest.param(edit_json(lambda meta: meta.update(svm=False)), "config.json", "svm is false, but model cnn_svm",
                 id="svm-flag-off"),
    pytest.param(set_config(model="simple_cnn"), "config.json", "model simple_cnn has no SVM stage", id="other-model"),
    pytest.param(edit_json(lambda meta: meta.update(format_version=2)), "config.json",
                 "bundle format 2 was written by a newer ecg-tune", id="newer-format"),
    pytest.param(edit_json(lambda meta: meta.update(format_version="one")), "config.json", "format_version",
                 id="format-version-string"),
    pytest.param(remove, "config.json", "not a model bundle (no config.json)", id="missing"),
]


# --- model/weights.pt -----------------------------------------------------------------------

def head_of(state: dict, rows: int) -> None:
    state["model.head.weight"] = state["model.head.weight"][:rows]


WEIGHT_CASES = [
    pytest.param(write(b""), "not a PyTorch weights file", id="empty"),
    pytest.param(cut_short, "not a PyTorch weights file", id="truncated"),
    pytest.param(write(RANDOM), "not a PyTorch weights file", id="random-bytes"),
    pytest.param(malicious_pickle, "not a PyTorch weights file", id="malicious-pickle"),
    pytest.param(malicious_torch_file, "could run code", id="malicious-torch-file"),
    pytest.param(edit_state(lambda state: head_of(state, 3)), "model.head.weight has shape [3, 64]",
                 id="wrong-shape"),
    pytest.param(edit_state(lambda state: state.pop("model.fc.bias")), "missing: model.fc.bias", id="tensor-missing"),
    pytest.param(other_model_weights, "unexpected", id="other-model"),
    pytest.param(lambda path: torch.save([1, 2, 3], path), "holds a list", id="a-list"),
    pytest.param(edit_state(lambda state: state.update({"model.fc.bias": state["model.fc.bias"].long()})),
                 "model.fc.bias is torch.int64", id="integer-weights"),
    pytest.param(edit_state(lambda state: state["model.fc.bias"].fill_(float("nan"))), "NaN", id="nan"),
    pytest.param(remove, "missing", id="missing"),
]


# --- model/svm.skops ------------------------------------------------------------------------

SVM_CASES = [
    pytest.param(write(b""), "empty file", id="empty"),
    pytest.param(cut_short, "not a skops file, or a damaged one", id="truncated"),
    pytest.param(write(RANDOM), "not a skops file", id="random-bytes"),
    pytest.param(malicious_pickle, "not a skops file", id="malicious-pickle"),
    pytest.param(untrusted_svm, "untrusted types", id="untrusted-type"),
    pytest.param(function_in_svm, "untrusted types: posix.system", id="untrusted-function"),
    pytest.param(skops_of({"hello": 1}), "not an SVM stage", id="other-content"),
    pytest.param(svm_state(lambda state: state.update(classes=[0, 1, 7])), "do not match its fitted pipeline",
                 id="classes-edited"),
    pytest.param(svm_state(lambda state: state.update(temperature=-1.0)), "temperature must be a positive number",
                 id="temperature-negative"),
    pytest.param(svm_state(lambda state: state["params"].update(kernel="poly")), "params:", id="unknown-param"),
    pytest.param(svm_on(features=8, classes=4), "does not fit the network's 64 features", id="other-features"),
    pytest.param(svm_on(features=64, classes=3), "gives 3 classes", id="other-classes"),
    pytest.param(remove, "cannot read the SVM stage", id="missing"),
]


def in_file(name: str, cases: list) -> list:
    """Cases of one bundle file as (damaged file, corrupt, file the error names, words); a case of
    two values (corrupt, words) names the damaged file."""
    params = []
    for case in cases:
        corrupt, *rest = case.values
        named, words = rest if len(rest) == 2 else (name, *rest)
        params.append(pytest.param(name, corrupt, named, words, id=f"{name}-{case.id}"))
    return params


@pytest.mark.parametrize("damaged,corrupt,named,words", in_file("config.json", CONFIG_CASES)
                         + in_file("weights.pt", WEIGHT_CASES) + in_file("svm.skops", SVM_CASES))
def test_damaged_bundle_file_is_one_line_naming_it_and_runs_no_code(run: Path, capsys: pytest.CaptureFixture[str],
                                                                    damaged: str, corrupt: Callable[[Path], None],
                                                                    named: str, words: str) -> None:
    corrupt(run / "model" / damaged)
    line = one_line_error("predict", run, capsys)
    assert named in line and words in line, line
    assert not (run / "model" / MARKER).exists(), "loading the bundle ran code"


def test_the_undamaged_bundle_predicts(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The grid's baseline: the same copy, undamaged, classifies its records."""
    assert main(COMMANDS["predict"](run)) == 0
    out = capsys.readouterr()
    assert len(out.out.strip().splitlines()) == 1 + len(pd.read_parquet(run / INPUTS)), out.err
    assert not list((run / "model").glob("*.partial")), "save_bundle left a temporary file"


# --- split.csv ------------------------------------------------------------------------------

SPLIT_CASES = [
    pytest.param(write(""), "expected a CSV with columns record,split", id="empty"),
    pytest.param(write("record,split\n"), "60 record(s) of synthetic:60 are not in the split file", id="header-only"),
    pytest.param(cut_short, "", id="truncated"),
    pytest.param(write(BINARY), "not a CSV text file", id="binary"),
    pytest.param(write('{"S00001": "train"}'), "expected a CSV with columns record,split", id="json"),
    pytest.param(lambda path: path.write_text(path.read_text().replace(",", ";")),
                 "expected a CSV with columns record,split", id="semicolons"),
    pytest.param(edit_lines(lambda lines: [*lines, lines[1]]), "listed more than once: S00001", id="row-repeated"),
    pytest.param(edit_lines(lambda lines: [*lines, lines[1].split(",")[0] + ",test"]), "listed more than once",
                 id="record-in-two-parts"),
    pytest.param(edit_lines(lambda lines: [*lines, "X99999,train"]), "1 record(s) not in synthetic:60: X99999",
                 id="unknown-record"),
    pytest.param(edit_lines(lambda lines: [lines[0], lines[1].split(",")[0] + ",holdout", *lines[2:]]),
                 "unknown split names 'holdout'", id="unknown-part"),
    pytest.param(edit_lines(lambda lines: [lines[0], lines[1] + ",extra", *lines[2:]]),
                 "line 2 is not a record,split row", id="extra-field"),
    pytest.param(edit_lines(lambda lines: [lines[0], lines[1].split(",")[0], *lines[2:]]),
                 "line 2 is not a record,split row", id="field-missing"),
    pytest.param(lambda path: path.write_text(path.read_text().replace(",test", ",train")), "the test part is empty",
                 id="no-test-part"),
    pytest.param(edit_lines(lambda lines: [lines[0], *(line.split(",")[0] + ",unused" for line in lines[1:])]),
                 "the train part is empty", id="all-unused"),
]


@pytest.mark.parametrize("command", ["refit", "train"])
@pytest.mark.parametrize("corrupt,words", SPLIT_CASES)
def test_damaged_split_is_one_line_naming_the_file(run: Path, capsys: pytest.CaptureFixture[str], command: str,
                                                   corrupt: Callable[[Path], None], words: str) -> None:
    corrupt(run / "split.csv")
    line = one_line_error(command, run, capsys)
    assert "split.csv" in line and words in line, line


def test_missing_split_of_a_run_is_one_line(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "split.csv").unlink()
    line = one_line_error("refit", run, capsys)
    assert "split.csv: cannot read the split file" in line, line


HARMLESS_SPLIT_EDITS = [
    pytest.param(edit_lines(lambda lines: [lines[0], *reversed(lines[1:])]), id="rows-reordered"),
    pytest.param(edit_lines(lambda lines: [",".join(reversed(line.split(","))) for line in lines]),
                 id="columns-swapped"),
    pytest.param(edit_lines(lambda lines: [line.replace(",", ", ") for line in lines]), id="spaces-after-commas"),
    pytest.param(lambda path: path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n")),
                 id="spreadsheet-bom-crlf"),
    pytest.param(edit_lines(lambda lines: [*lines, ""]), id="blank-line"),
]


@pytest.mark.parametrize("corrupt", HARMLESS_SPLIT_EDITS)
def test_harmless_split_edits_keep_the_split(run: Path, corrupt: Callable[[Path], None]) -> None:
    records = load(DATA, progress=False)
    original = load_split(run / "split.csv", records)
    corrupt(run / "split.csv")
    np.testing.assert_array_equal(load_split(run / "split.csv", records, split_digest(records, original)), original)
    with pytest.raises(Reached):  # and the refit goes ahead on it
        main(COMMANDS["refit"](run))


@pytest.mark.parametrize("source,target", [("train", "test"), ("test", "train"), ("val", "unused")])
def test_a_split_moved_since_the_search_is_refused(run: Path, source: str, target: str) -> None:
    records = load(DATA, progress=False)
    digest = split_digest(records, load_split(run / "split.csv", records))
    move_record(source, target)(run / "split.csv")
    with pytest.raises(DataError, match="split.csv: not the split the search used") as info:
        load_split(run / "split.csv", records, expected_digest=digest)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not RECORDS_SPLIT_DIGEST, reason="runs.BestConfig has no split_digest yet: the refit cannot "
                                                     "tell an edited split.csv (change described in issue 16's report)")
@pytest.mark.parametrize("command", ["refit", "train"])
def test_refit_refuses_a_split_edited_since_the_search(run: Path, capsys: pytest.CaptureFixture[str],
                                                       command: str) -> None:
    move_record("train", "test")(run / "split.csv")  # a record the best config trained on, now tested on
    line = one_line_error(command, run, capsys)
    assert "split.csv: not the split the search used" in line, line


# --- best_config.json -----------------------------------------------------------------------

BOTH = ("refit", "train")
BEST_CASES = [
    pytest.param(write(""), "best_config.json", id="empty"),
    pytest.param(cut_short, "best_config.json", id="truncated"),
    pytest.param(write("config: {}\n"), "best_config.json", id="yaml-not-json"),
    pytest.param(write(BINARY), "best_config.json", id="binary"),
    pytest.param(write("[]"), "best_config.json", id="a-list"),
    pytest.param(edit_json(lambda best: best.pop("epoch")), "epoch", id="no-epoch"),
    pytest.param(edit_json(lambda best: best.pop("data")), "data", id="no-data"),
    pytest.param(edit_json(lambda best: best["config"].update(transform="wavelet", levels=-3)),
                 "levels: must be at least 1, got -3", id="levels-negative"),
    pytest.param(edit_json(lambda best: best["config"].update(model="vgg")), "unknown model 'vgg'",
                 id="unknown-model"),
    pytest.param(edit_json(lambda best: best["config"].update(colour="red")), "colour: unknown key",
                 id="unknown-key"),
    pytest.param(edit_json(lambda best: best["config"].update(lr="fast")), "lr: Input should be a valid number",
                 id="string-for-float"),
    pytest.param(edit_json(lambda best: best.update(epoch="one")), "epoch: Input should be a valid integer",
                 id="epoch-a-string"),
    pytest.param(edit_json(lambda best: best.update(epoch=-3)), "epoch: must be at least 1, got -3",
                 id="epoch-negative"),
    pytest.param(edit_json(lambda best: best.update(epoch=1.5)), "epoch: Input should be a valid integer",
                 id="epoch-fraction"),
    pytest.param(edit_json(lambda best: best.update(epoch=True)), "epoch: Input should be a valid integer",
                 id="epoch-boolean"),
    pytest.param(edit_json(lambda best: best.update(data=5)), "data: Input should be a valid string",
                 id="data-a-number"),
    pytest.param(edit_json(lambda best: best.update(metric="val_nope")), "metric 'val_nope' is not among its metrics",
                 id="metric-unknown"),
    pytest.param(edit_json(lambda best: best["metrics"].update(val_cinc_f1="high")),
                 "metrics: val_cinc_f1: Input should be a valid number", id="metric-a-string"),
    pytest.param(edit_json(lambda best: best.update(threads="two")), "threads: Input should be a valid integer",
                 id="threads-a-string"),
    pytest.param(edit_json(lambda best: best.update(threads=-2)), "threads: must be at least 1, got -2",
                 id="threads-negative"),
    pytest.param(edit_json(lambda best: best.update(cv=-1)), "cv: must be at least 1, got -1", id="cv-negative"),
]


@pytest.mark.parametrize("command", BOTH)
@pytest.mark.parametrize("corrupt,words", BEST_CASES)
def test_damaged_best_config_is_one_line_naming_the_file(run: Path, capsys: pytest.CaptureFixture[str],
                                                         command: str, corrupt: Callable[[Path], None],
                                                         words: str) -> None:
    corrupt(run / "best_config.json")
    line = one_line_error(command, run, capsys)
    assert "best_config.json" in line and words in line, line


def test_the_undamaged_run_reaches_training(run: Path) -> None:
    """The grid's baseline: refit and train accept the undamaged copy."""
    for command in ("refit", "train"):
        with pytest.raises(Reached):
            main(COMMANDS[command](run))


# --- the real scripts, as processes ---------------------------------------------------------

def script(name: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # RAY_ADDRESS=local: were a damaged file let through, the refit would start a cluster of its
    # own rather than attach to another one on this machine.
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAY_ADDRESS": "local"})


def assert_one_line_from_process(result: subprocess.CompletedProcess, named: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr


def test_predict_script_refuses_a_malicious_weights_file(run: Path) -> None:
    malicious_torch_file(run / "model" / "weights.pt")
    result = script("predict.py", "--model", str(run / "model"), str(run / INPUTS))
    assert_one_line_from_process(result, "weights.pt")
    assert not (run / "model" / MARKER).exists()
    assert result.stdout == ""


def test_refit_script_refuses_a_repeated_split_row(run: Path) -> None:
    edit_lines(lambda lines: [*lines, lines[5]])(run / "split.csv")
    assert_one_line_from_process(script("refit.py", "--run", str(run)), "split.csv")


@pytest.mark.slow  # a third process (~10 s here); the default run has predict's and refit's
def test_train_script_refuses_a_damaged_best_config(run: Path) -> None:
    cut_short(run / "best_config.json")
    assert_one_line_from_process(script("train.py", "--config", str(run / "best_config.json")), "best_config.json")


@pytest.mark.slow
def test_a_real_search_folder_refuses_each_kind_of_damage(tmp_path: Path) -> None:
    """The run folder of a real search (about a minute), damaged once per file kind, through the
    scripts."""
    made = tmp_path / "made"
    result = script("search.py", "--space", "smoke", "--data", DATA, "--num-samples", "1", "--max-epochs", "1",
                    "--out", str(made), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    inputs = tmp_path / INPUTS
    records = load(DATA, progress=False)
    pd.DataFrame({"signal": [np.asarray(s) for s in records.signals[:5]], "fs": 300.0}).to_parquet(inputs)
    cases: list[tuple[str, Callable[[Path], None], str, list[str]]] = [
        ("model/config.json", set_config(model="vgg"), "predict.py", ["--model", "{run}/model", str(inputs)]),
        ("model/weights.pt", malicious_torch_file, "predict.py", ["--model", "{run}/model", str(inputs)]),
        ("model/svm.skops", untrusted_svm, "predict.py", ["--model", "{run}/model", str(inputs)]),
        ("split.csv", edit_lines(lambda lines: [*lines, "X99999,train"]), "refit.py", ["--run", "{run}"]),
        ("best_config.json", edit_json(lambda best: best["config"].update(levels="six")), "train.py",
         ["--config", "{run}/best_config.json"]),
    ]
    for index, (name, corrupt, entry, args) in enumerate(cases):
        run = Path(shutil.copytree(made, tmp_path / f"case{index}"))
        corrupt(run / name)
        result = script(entry, *(arg.format(run=run) for arg in args))
        assert_one_line_from_process(result, name.rpartition("/")[2])
        assert not (run / "model" / MARKER).exists()


# --- at_rate --------------------------------------------------------------------------------

@pytest.mark.parametrize("fs,assumed,words", [(None, -250.0, "positive number of Hz, got -250 (--fs)"),
                                              (1e6, None, "too far from the model's 300 Hz")])
def test_impossible_sampling_rates_are_one_line(fs: float | None, assumed: float | None, words: str) -> None:
    records = Records(signals=[np.zeros(3000, np.float32)], labels=None, classes=[], record_ids=["r"], fs=fs,
                      source="table.csv")
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        at_rate(records, 300.0, assumed)


# --- bundles as earlier versions wrote them -------------------------------------------------

# TrainConfig's keys when the bundle was introduced (f2e21c3): every later key is new, none gone.
FIRST_KEYS = ("model", "feature_size", "width", "depth", "dropout", "svm_c", "svm_gamma", "svm_max_train",
              "normalisation", "input_length", "fit", "augmentation", "noise_std", "transform", "wavelet", "levels",
              "wavelet_output", "fourier_log", "epochs", "batch_size", "lr", "weight_decay", "class_weighting",
              "lr_scheduler", "plateau_factor", "plateau_patience", "early_stop_patience", "window_overlap", "seed")


def as_first_written(meta: dict) -> dict:
    """config.json as f2e21c3 wrote it: the config of its keys, and preprocessing listing the four
    transform options for every transform, None where unused."""
    config = {key: meta["config"][key] for key in FIRST_KEYS}
    transform, pre = config["transform"], meta["preprocessing"]
    return {"format_version": 1, "config": config, "classes": meta["classes"], "fs": meta["fs"],
            "preprocessing": {
                "normalisation": pre["normalisation"], "input_length": pre["input_length"], "transform": transform,
                **{key: config[key] if transform == "wavelet" else None
                   for key in ("wavelet", "levels", "wavelet_output")},
                "fourier_log": config["fourier_log"] if transform == "fourier" else None,
                "windowing": pre["windowing"]},
            "svm": meta["svm"]}


def without_rocket_head(meta: dict) -> dict:
    """config.json of a minirocket bundle as cb548ec..558bde3 wrote it (no rocket_head yet)."""
    meta["config"].pop("rocket_head")
    return meta


OLD_LAYOUTS = [
    pytest.param({"model": "simple_cnn", "transform": "wavelet", "levels": 2, "wavelet_output": "bands"},
                 as_first_written, id="f2e21c3-wavelet"),
    pytest.param({"model": "ecg_cnn", "transform": "fourier", "fourier_log": True}, as_first_written,
                 id="f2e21c3-fourier"),
    pytest.param({"model": "cnn_svm"}, as_first_written, id="f2e21c3-cnn-svm"),
    pytest.param({"model": "minirocket", "rocket_features": 840, "rocket_max_dilations": 4}, without_rocket_head,
                 id="cb548ec-minirocket"),
]


@pytest.mark.parametrize("values,layout", OLD_LAYOUTS)
def test_bundles_of_earlier_layouts_load_and_predict_the_same(tmp_path: Path, values: dict,
                                                              layout: Callable[[dict], dict]) -> None:
    torch.manual_seed(0)
    config = make_config(values)
    network = build_network(config, 256, 3)
    svm = None
    head = network.model.fitted_head()
    if head is not None and head.file is not None:  # a head the bundle keeps apart (the SVM stage)
        rng = np.random.default_rng(0)
        svm = head.fit(rng.normal(size=(30, network.model.feature_dim)), np.arange(30) % 3, n_classes=3)
    now = save_bundle(tmp_path / "now", network, svm, config, ["A", "N", "O"], 300.0, onnx=False)
    before = Path(shutil.copytree(now, tmp_path / "before"))
    (before / "config.json").write_text(json.dumps(layout(json.loads((now / "config.json").read_text())), indent=2))
    rng = np.random.default_rng(1)
    records = Records(signals=[rng.normal(size=n).astype(np.float32) for n in (200, 256, 700)], labels=None,
                      classes=["A", "N", "O"], record_ids=["a", "b", "c"], fs=300.0, source="x")
    expected = load_bundle(now, device="cpu").predict(records)
    np.testing.assert_array_equal(load_bundle(before, device="cpu").predict(records), expected)


# --- the Parquet cache ----------------------------------------------------------------------

def rewrite_entry(change: Callable[[pa.Table, dict], tuple[pa.Table, dict]]) -> Callable[[Path], None]:
    """The entry rewritten through pyarrow, its table and ecg_tune metadata changed."""
    def corrupt(path: Path) -> None:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[b"ecg_tune"])
        table, meta = change(table, meta)
        pq.write_table(table.replace_schema_metadata({"ecg_tune": json.dumps(meta)}), path)
    return corrupt


def flip_byte(fraction: float) -> Callable[[Path], None]:
    def corrupt(path: Path) -> None:
        content = bytearray(path.read_bytes())
        content[int(fraction * (len(content) - 1))] ^= 0xFF
        path.write_bytes(bytes(content))
    return corrupt


CACHE_CASES = [
    pytest.param(write(b""), True, id="empty"),
    pytest.param(cut_short, True, id="truncated"),
    pytest.param(write(RANDOM), True, id="random-bytes"),
    pytest.param(write("record,signal\n"), True, id="text"),
    pytest.param(lambda path: pd.read_parquet(path).to_parquet(path), True, id="rewritten-by-pandas"),
    pytest.param(rewrite_entry(lambda table, meta: (table, {**meta, "digest": "0" * 64})), True, id="digest-edited"),
    pytest.param(rewrite_entry(lambda table, meta: (
        table.set_column(table.schema.get_field_index("label"), "label", pa.array([1] * len(table), pa.int64())),
        meta)), True, id="labels-edited"),
    pytest.param(rewrite_entry(lambda table, meta: (table, {**meta, "fs": 500.0})), True, id="metadata-edited"),
    # A flipped byte that nothing reads back (e.g. in the writer's name) may go unnoticed: the
    # records must be the source's either way.
    *(pytest.param(flip_byte(fraction), False, id=f"byte-flipped-at-{fraction:.2f}")
      for fraction in np.linspace(0.02, 0.98, 13)),
]


@pytest.fixture
def cached_table(tmp_path: Path) -> tuple[Path, Path, Records]:
    """A table source read once (so its cache entry exists), its entry and its records."""
    source = tmp_path / "table.parquet"
    rng = np.random.default_rng(3)
    pd.DataFrame({"signal": [rng.normal(size=400).astype(np.float32) for _ in range(20)],
                  "label": ["N", "A"] * 10}).to_parquet(source)
    expected = load(str(source), progress=False)
    entry = cache.cache_path(source.resolve(), {"label_column": None})
    assert entry is not None and entry.is_file()
    return source, entry, expected


def same_records(a: Records, b: Records) -> bool:
    return (a.record_ids == b.record_ids and a.classes == b.classes and a.fs == b.fs
            and np.array_equal(a.labels, b.labels) and all(map(np.array_equal, a.signals, b.signals)))


@pytest.mark.parametrize("corrupt,must_warn", CACHE_CASES)
def test_damaged_cache_entry_is_read_again_from_the_source(cached_table: tuple[Path, Path, Records],
                                                           corrupt: Callable[[Path], None], must_warn: bool) -> None:
    source, entry, expected = cached_table
    corrupt(entry)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = load(str(source), progress=False)
    assert same_records(records, expected), "a damaged cache entry gave different records"
    messages = [str(w.message) for w in caught]
    assert all(str(entry) in message and "rebuilt" in message for message in messages), messages
    assert len(messages) == 1 or not must_warn, messages
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the entry was written again: the next load reads it quietly
        assert same_records(load(str(source), progress=False), expected)
