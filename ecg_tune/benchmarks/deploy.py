"""The delivered model on three runtimes: torch eager, onnxruntime fp32 and onnxruntime int8.

`compare_runtimes` owns the comparison the deployment figures come from: per record, whether the
ONNX graphs predict the torch bundle's class and how far their probabilities are from torch's;
and the latency of one 30-s record at batch 1 on `threads` threads for each runtime, the whole
record path timed (normalisation, windows, transform, model, head, the average), warm-up first,
then the median of `repeats` runs. The int8 graph is written (`export --quantize int8`'s
model.int8.onnx) when the bundle has none.

Beside the graphs, torch against itself on the records moved by one float32 ulp (`torch_1ulp`):
the model's own float32 floor. A model whose features compare values with thresholds (minirocket's
PPV: the share of outputs above a bias) changes its probabilities under any change of rounding, so
no float32 graph can come closer to torch than that floor.

`run_delivered` does the same for the model a refit delivered (`benchmark deploy --run DIR`), on
that search's own test records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecg_tune.bundle import at_rate, load_bundle
from ecg_tune.data.records import Records
from ecg_tune.onnx_export import quantize_int8
from ecg_tune.onnx_runtime import INT8_FILE, ONNX_FILE, OnnxModel

RECORD_SECONDS = 30.0


def compare_runtimes(model_dir: str | Path, records: Records, threads: int = 1, repeats: int = 7) -> dict[str, Any]:
    """Agreement of onnxruntime fp32 and int8 with torch on `records` (resampled to the bundle's
    rate), and each runtime's median latency (ms) for one 30-s record at batch 1."""
    folder = Path(model_dir)
    bundle = load_bundle(folder, device="cpu")
    if not (folder / INT8_FILE).is_file():
        quantize_int8(folder)
    fp32, int8 = OnnxModel(folder, threads=threads), OnnxModel(folder, onnx_file=INT8_FILE, threads=threads)
    records = at_rate(records, bundle.fs)

    def torch_eager(signals: list[np.ndarray]) -> np.ndarray:
        return bundle.predict(Records(signals=signals, labels=None, classes=bundle.classes,
                                      record_ids=[str(i) for i in range(len(signals))], fs=bundle.fs))

    runtimes: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
        "torch": torch_eager, "onnx_fp32": fp32.predict_signals, "onnx_int8": int8.predict_signals}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        found = {name: run(list(records.signals)) for name, run in runtimes.items()}
        found["torch_1ulp"] = torch_eager(one_ulp_away(records.signals))
        length = int(round(RECORD_SECONDS * bundle.fs)) if bundle.fs else max(len(s) for s in records.signals)
        # One real record, repeated or cut to 30 s: the latency of a typical record's windows.
        record = np.resize(np.asarray(records.signals[0], dtype=np.float32), length)
        latency = {name: _median_ms(run, [record], repeats) for name, run in runtimes.items()}
    finally:
        torch.set_num_threads(threads_before)
    reference = found["torch"]
    rows = []
    for i, record_id in enumerate(records.record_ids):
        row: dict[str, Any] = {"record": record_id, "torch": bundle.classes[int(reference[i].argmax())]}
        for name in COMPARED:
            row[name] = bundle.classes[int(found[name][i].argmax())]
            row[f"{name}_same_class"] = row[name] == row["torch"]
            row[f"{name}_max_abs_diff"] = float(np.abs(found[name][i] - reference[i]).max())
        rows.append(row)
    summary = {name: {"same_class": float(np.mean([r[f"{name}_same_class"] for r in rows])),
                      "max_abs_diff": float(max(r[f"{name}_max_abs_diff"] for r in rows))}
               for name in COMPARED}
    if records.labels is not None:  # what int8 costs in the figures a user reads
        from ecg_tune.training.metrics import classification_metrics

        truth = np.asarray([bundle.classes.index(records.classes[int(k)]) for k in records.labels])
        for name, probabilities in found.items():
            if name == "torch_1ulp":
                continue
            figures = classification_metrics(truth, probabilities.argmax(axis=1), bundle.classes)
            summary.setdefault(name, {}).update(
                {k: float(figures[k]) for k in ("accuracy", "macro_f1", "cinc_f1") if k in figures})
    return {"records": rows, "agreement": summary, "latency_ms": latency, "threads": threads,
            "record_samples": length, "record_seconds": length / bundle.fs if bundle.fs else None,
            "files_bytes": {"fp32": fp32.path.stat().st_size, "int8": int8.path.stat().st_size}}


COMPARED = ("onnx_fp32", "onnx_int8", "torch_1ulp")  # each against torch on the records as given


def one_ulp_away(signals: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Each float32 sample moved to its neighbour above or below (at random): the smallest change
    of an input float32 can represent."""
    rng = np.random.default_rng(seed)
    moved = []
    for signal in signals:
        values = np.asarray(signal, dtype=np.float32)
        towards = np.where(rng.random(values.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
        moved.append(np.nextafter(values, towards))
    return moved


def run_delivered(run_dir: Path, test_records: int = 200, threads: int = 1,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """The delivered model of a finished, refitted search in `run_dir` (a single model or a team):
    its graph written when the refit left none (`--no-onnx`), with the int8 copy, then compared
    on the first `test_records` of that search's test records."""
    from ecg_tune.bundle import export_bundle
    from ecg_tune.refit import refit_setup
    from ecg_tune.runs import RunFolder

    run = RunFolder(run_dir)
    report = run.report()  # refitted, or a one-line error saying so
    if not (run.model_dir / ONNX_FILE).is_file():
        log(f"{run.model_dir}: no model.onnx; exporting it")
        export_bundle(run.model_dir, quantize="int8")
    dataset = refit_setup(run).dataset
    test = dataset.index("test")[:test_records]
    compared = compare_runtimes(run.model_dir, dataset.records.subset(test), threads=threads)
    compared.pop("records")
    members = [m["trial_id"] for m in report.get("ensemble", {}).get("members", [])] or [run.best().trial_id]
    return {"run": str(run.path), "members": members, "test_records": int(len(test)), **compared}


def _median_ms(run: Callable[[list[np.ndarray]], object], signals: list[np.ndarray], repeats: int) -> float:
    """Median wall time of `run(signals)` in milliseconds over `repeats` runs, after one warm-up run."""
    run(signals)
    times = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        run(signals)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000.0)


# One configuration per model family, as full's start points set them (A, F, D; cnn_svm is D with
# the SVM stage, ecg_cnn D's shape on A's approximation, where its Linear layer stays small).
FAMILIES: dict[str, dict[str, Any]] = {
    "resnet1d": {"model": "resnet1d", "width": 16, "depth": 4, "dropout": 0.3, "input_length": 9000, "fit": "pad",
                 "transform": "wavelet", "wavelet": "db2", "levels": 2, "wavelet_output": "approx",
                 "augmentation": "shift_only", "lr": 0.002, "batch_size": 32},
    "minirocket": {"model": "minirocket", "rocket_head": "ridge", "rocket_features": 10000, "input_length": 9000,
                   "transform": "wavelet", "wavelet": "db2", "levels": 2, "wavelet_output": "approx"},
    "simple_cnn": {"model": "simple_cnn", "feature_size": 64, "input_length": 3000, "fit": "pad",
                   "transform": "none", "augmentation": "none", "lr": 0.001, "batch_size": 32},
    "cnn_svm": {"model": "cnn_svm", "feature_size": 64, "input_length": 3000, "fit": "pad",
                "transform": "none", "augmentation": "none", "lr": 0.001, "batch_size": 32},
    "ecg_cnn": {"model": "ecg_cnn", "input_length": 9000, "fit": "pad", "transform": "wavelet", "wavelet": "db2",
                "levels": 2, "wavelet_output": "approx", "augmentation": "none", "lr": 0.001, "batch_size": 32},
}


def run_deploy_benchmark(dataset: Any, folder: Path, families: list[str] | None = None, epochs: int = 2,
                         train_records: int = 2000, test_records: int = 200, threads: int = 1,
                         cpus: float = 1.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Per model family: train its configuration (`FAMILIES`) for `epochs` on a stratified
    `train_records` of the train part, save the bundle (with its ONNX graph) under `folder`, and
    compare the runtimes on the first `test_records` test records. Accuracy is not the point (a
    short training); agreement and latency are, on real record lengths."""
    from ecg_tune.bundle import save_bundle
    from ecg_tune.config import make_config
    from ecg_tune.refit import train_and_predict
    from ecg_tune.training.network import build_network

    rng = np.random.default_rng(0)
    train = dataset.index("train")
    train = np.sort(rng.choice(train, size=min(train_records, len(train)), replace=False))
    test = dataset.index("test")[:test_records]
    classes = list(dataset.records.classes)
    results: dict[str, Any] = {"epochs": epochs, "train_records": int(len(train)), "test_records": int(len(test)),
                               "families": {}}
    for family in families or list(FAMILIES):
        config = make_config({**FAMILIES[family], "epochs": epochs, "seed": 0}, where=f"deploy benchmark: {family}")
        started = time.perf_counter()
        output = train_and_predict(config, dataset, train, test, [float(config.lr)] * epochs, cpus=cpus)
        network = build_network(config, output.input_length, len(classes))
        network.load_state_dict(output.state)
        head = network.model.restore_head(output.head)
        bundle_dir = folder / family
        save_bundle(bundle_dir, network, head, config, classes, dataset.records.fs)
        trained_s = time.perf_counter() - started
        if not (bundle_dir / "model.onnx").is_file():
            log(f"{family}: no model.onnx was written (see the warning above); not compared")
            results["families"][family] = {"exported": False, "train_and_export_s": trained_s}
            continue
        compared = compare_runtimes(bundle_dir, dataset.records.subset(test), threads=threads)
        compared.pop("records")
        results["families"][family] = {"exported": True, "train_and_export_s": trained_s, **compared}
        agreement, latency = compared["agreement"], compared["latency_ms"]
        log(f"{family}: same class fp32 {agreement['onnx_fp32']['same_class']:.3f} (max |dp| "
            f"{agreement['onnx_fp32']['max_abs_diff']:.1e}), int8 {agreement['onnx_int8']['same_class']:.3f}; "
            f"latency ms torch {latency['torch']:.1f}, onnx fp32 {latency['onnx_fp32']:.1f}, "
            f"int8 {latency['onnx_int8']:.1f}")
    return results


def table(result: dict[str, Any]) -> str:
    """Agreement and latency per family, or for the delivered model of `--run` (one 30-s record,
    batch 1, one thread). `torch 1 ulp`: torch against itself on inputs one ulp away (the floor)."""
    lines = ["| model | same class fp32 | max abs diff fp32 | torch 1 ulp | same class int8 | test F1 fp32 -> int8 "
             "| torch ms | onnx fp32 ms | onnx int8 ms | fp32 / int8 file MB |",
             "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    rows = result.get("families") or {"delivered: " + " + ".join(result["members"]): {"exported": True, **result}}
    for name, r in rows.items():
        if not r.get("exported"):
            lines.append(f"| {name} | not exported | | | | | | | | |")
            continue
        a, t, f = r["agreement"], r["latency_ms"], r["files_bytes"]
        key = "cinc_f1" if "cinc_f1" in a["torch"] else "macro_f1"
        floor = a.get("torch_1ulp", {}).get("max_abs_diff")
        lines.append(f"| {name} | {a['onnx_fp32']['same_class']:.3f} | {a['onnx_fp32']['max_abs_diff']:.1e} "
                     f"| {'' if floor is None else f'{floor:.1e}'} "
                     f"| {a['onnx_int8']['same_class']:.3f} | {a['onnx_fp32'][key]:.3f} -> {a['onnx_int8'][key]:.3f} "
                     f"| {t['torch']:.1f} | {t['onnx_fp32']:.1f} | {t['onnx_int8']:.1f} "
                     f"| {f['fp32'] / 1e6:.2f} / {f['int8'] / 1e6:.2f} |")
    return "\n".join(lines)
