"""`benchmark precision`: what bf16 autocast (training/precision.py) buys each model family, and
what `auto` chooses.

Speed: every case is trained through the loop for a few epochs in fp32, bf16 and auto (the
precisions interleaved, rounds repeated), on one thread, on the shapes the start points of `full`
give (adapted to the data as a search adapts them): every start point, plus the families no start
point has (ecg_cnn and cnn_svm on a start point's input) and the issue's small case (simple_cnn on
the db2 level-6 approximation, 1 x 143 at 9000 samples). Reported per case: the forward's
floating-point operations per batch (what auto's first test reads), ms per training step, seconds
per epoch (validation included, and auto's own measurement in its first epoch), what auto chose,
and the evaluation forward's bf16 speed-up (evaluation stays fp32: this column says what that
leaves). A model trained by no step (minirocket's ridge head) is run once: every precision is fp32.

Accuracy (`--accuracy`): the first start point (A: resnet1d on the db2 level-2 approximation)
trained in fp32 and bf16 for the same seeds and epochs, validated as a search validates; the mean
best validation score of each.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ecg_tune.data import Dataset

PRECISIONS = ("fp32", "bf16", "auto")
EPOCHS = 2  # per timed run: the shortest trial ASHA keeps (full's grace period)
FORWARD_WINDOWS = 256  # evaluation's batch of windows


def cases(dataset: Dataset) -> list[tuple[str, dict[str, Any]]]:
    """(label, config values) of every measured case (module docstring)."""
    from ecg_tune.search.adapt import DataFacts, adapt
    from ecg_tune.search.space_file import load_space

    starts = list(adapt(load_space("full"), DataFacts.from_dataset(dataset)).start)
    found = [(f"start {i} {p.get('model')}", dict(p)) for i, p in enumerate(starts)]
    residual = next(p for p in starts if p.get("model") == "resnet1d")
    plain = next(p for p in starts if p.get("model") == "simple_cnn")
    found += [("ecg_cnn on start 0's input", {**residual, "model": "ecg_cnn", "width": 16}),
              ("cnn_svm on start 2's input", {**plain, "model": "cnn_svm"}),
              ("simple_cnn, db2 level 6", {**residual, "model": "simple_cnn", "levels": 6, "lr": 0.001})]
    return found


def run_precision_benchmark(dataset: Dataset, rounds: int = 1, epochs: int = EPOCHS,
                            log: Callable[[str], None] = print) -> dict:
    """Every case in every precision, `rounds` times, precisions interleaved within a round."""
    from ecg_tune.training.precision import MARGIN, MIN_EPOCH_STEPS, MIN_FORWARD_FLOPS, fast_bf16

    torch.set_num_threads(1)
    train, val = dataset.index("train"), dataset.index("val")
    rows = []
    for label, values in cases(dataset):
        row = _describe(label, values, dataset)
        runs: dict[str, list[dict]] = {p: [] for p in (PRECISIONS if row["stepped"] else ("auto",))}
        # Untimed, on a few records: a shape's first run in a precision builds its kernels.
        for precision in ("fp32", "bf16") if row["stepped"] else ("auto",):
            _timed_run(values, precision, 1, dataset, train[:64], val[:2])
        for _ in range(rounds):
            for precision in runs:
                runs[precision].append(_timed_run(values, precision, epochs, dataset, train, val))
                log(f"{label} {precision}: {runs[precision][-1]['epoch_s']:.2f} s/epoch, "
                    f"{runs[precision][-1]['step_ms']:.1f} ms/step, ran {runs[precision][-1]['ran']}")
        row["runs"] = runs
        row.update(_summary(runs))
        if row["stepped"]:
            row["forward_speedup"] = _forward_speedup(values, dataset)
        rows.append(row)
    rule = {"margin": MARGIN, "min_forward_flops": MIN_FORWARD_FLOPS, "min_epoch_steps": MIN_EPOCH_STEPS,
            "fast_bf16": fast_bf16(torch.device("cpu"))}
    return {"threads": 1, "epochs": epochs, "rounds": rounds, "train_records": len(train),
            "val_records": len(val), "auto_rule": rule, "rows": rows}


def _describe(label: str, values: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """The case's model, input shape, whether it trains by steps, its forward's FLOPs per batch."""
    from ecg_tune.config import make_config
    from ecg_tune.models.head import HeadFit
    from ecg_tune.training.network import build_network
    from ecg_tune.training.precision import forward_flops

    config = make_config(values)
    network = build_network(config, int(config.input_length or 9000), len(dataset.records.classes))
    head = network.model.fitted_head()
    channels, length = network.transform.output_shape
    torch.manual_seed(0)
    inputs = network.inputs(torch.randn(config.batch_size, network.input_length))
    return {"case": label, "model": config.model, "input": f"{channels} x {length}",
            "stepped": head is None or head.fit_when is not HeadFit.ONLY_EPOCH,
            "forward_mflop": forward_flops(network.model, inputs) / 1e6}


def _timed_run(values: dict[str, Any], precision: str, epochs: int, dataset: Dataset, train: np.ndarray,
               val: np.ndarray) -> dict[str, Any]:
    from ecg_tune.config import make_config
    from ecg_tune.training.loop import fit

    config = make_config({**values, "precision": precision, "epochs": epochs, "seed": 0, "early_stop_patience": 0})
    started = time.perf_counter()
    results = [r.metrics for r in fit(config, dataset.tensors, train, val, device="cpu")]
    steps = math.ceil(len(train) / config.batch_size)
    train_s = [len(train) / m["train_samples_per_s"] for m in results]
    return {"epoch_s": float(np.mean([m["epoch_seconds"] for m in results])),
            "step_ms": 1000 * float(np.mean(train_s)) / steps, "ran": "bf16" if results[-1]["bf16"] else "fp32",
            "wall_s": time.perf_counter() - started, "epoch_seconds": [m["epoch_seconds"] for m in results]}


def _summary(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Per precision the median over rounds; the ratios against fp32 (a lone run: all equal)."""
    summary: dict[str, Any] = {}
    for precision in PRECISIONS:
        chosen = runs.get(precision, runs["auto"])
        summary[f"{precision}_epoch_s"] = statistics.median(r["epoch_s"] for r in chosen)
        summary[f"{precision}_step_ms"] = statistics.median(r["step_ms"] for r in chosen)
    summary["auto_ran"] = "/".join(sorted({r["ran"] for r in runs["auto"]}))
    summary["bf16_step_speedup"] = summary["fp32_step_ms"] / summary["bf16_step_ms"]
    summary["bf16_epoch_speedup"] = summary["fp32_epoch_s"] / summary["bf16_epoch_s"]
    summary["auto_over_fp32"] = summary["auto_epoch_s"] / summary["fp32_epoch_s"]
    return summary


def _forward_speedup(values: dict[str, Any], dataset: Dataset, repeats: int = 3) -> float:
    """fp32 over bf16 time of the evaluation forward on FORWARD_WINDOWS windows (median of
    `repeats`, after a warm-up), the transform outside autocast as in training."""
    from ecg_tune.config import make_config
    from ecg_tune.training.network import build_network
    from ecg_tune.training.precision import Precision, autocast

    config = make_config(values)
    network = build_network(config, int(config.input_length or 9000), len(dataset.records.classes)).eval()
    torch.manual_seed(0)
    x = torch.randn(FORWARD_WINDOWS, network.input_length)
    cpu = torch.device("cpu")

    def seconds(precision: Precision) -> float:
        started = time.perf_counter()
        with torch.inference_mode(), autocast(cpu, precision):
            network.model(network.inputs(x))
        return time.perf_counter() - started

    times: dict[Precision, list[float]] = {"fp32": [], "bf16": []}
    for precision in times:
        seconds(precision)
    for _ in range(repeats):
        for precision, measured in times.items():
            measured.append(seconds(precision))
    return statistics.median(times["fp32"]) / statistics.median(times["bf16"])


def run_accuracy(dataset: Dataset, seeds: int = 3, epochs: int = 20, log: Callable[[str], None] = print) -> dict:
    """Start point 0 of `full` in fp32 and bf16, each seed, validated as a search validates: the
    best validation score of each run and their means."""
    from ecg_tune.config import make_config
    from ecg_tune.training.folds import choose_validation, fit_folds
    from ecg_tune.training.metrics import best_value, ranking_metric

    label, values = cases(dataset)[0]
    metric = ranking_metric(dataset.records.classes)
    validation = choose_validation(dataset, "auto", seed=0)
    runs = []
    for seed in range(seeds):
        for precision in ("fp32", "bf16"):
            config = make_config({**values, "precision": precision, "epochs": epochs, "seed": seed,
                                  "early_stop_patience": 0})
            curve = [float(r.metrics[metric]) for r in fit_folds(config, dataset.tensors, validation.folds)]
            runs.append({"seed": seed, "precision": precision, "best": best_value(metric, curve), "curve": curve})
            log(f"{label} {precision} seed {seed}: best {metric} {runs[-1]['best']:.4f}")
    means = {p: float(np.mean([r["best"] for r in runs if r["precision"] == p])) for p in ("fp32", "bf16")}
    return {"case": label, "metric": metric, "seeds": seeds, "epochs": epochs, "validation": validation.description,
            "runs": runs, "mean_best": means, "bf16_minus_fp32": means["bf16"] - means["fp32"]}


def table(result: dict) -> str:
    head = ("| case | input | fwd MFLOP/batch | fp32 ms/step | bf16 ms/step | bf16 speed-up (step) | "
            "fp32 s/epoch | bf16 s/epoch | bf16 speed-up (epoch) | auto s/epoch | auto chose | auto / fp32 | "
            "eval forward bf16 speed-up |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    lines = [head]
    for r in result["rows"]:
        forward = f"{r['forward_speedup']:.2f}x" if "forward_speedup" in r else "-"
        if not r["stepped"]:
            lines.append(f"| {r['case']} | {r['input']} | {r['forward_mflop']:.0f} | - | - | - | "
                         f"{r['auto_epoch_s']:.2f} (no step: fp32) | = | - | = | fp32 | 1.00 | {forward} |")
            continue
        lines.append(f"| {r['case']} | {r['input']} | {r['forward_mflop']:.0f} | {r['fp32_step_ms']:.1f} | "
                     f"{r['bf16_step_ms']:.1f} | {r['bf16_step_speedup']:.2f}x | {r['fp32_epoch_s']:.2f} | "
                     f"{r['bf16_epoch_s']:.2f} | {r['bf16_epoch_speedup']:.2f}x | {r['auto_epoch_s']:.2f} | "
                     f"{r['auto_ran']} | {r['auto_over_fp32']:.2f} | {forward} |")
    accuracy = result.get("accuracy")
    if accuracy:
        lines += ["", f"accuracy ({accuracy['case']}, {accuracy['seeds']} seeds x {accuracy['epochs']} epochs, "
                      f"{accuracy['validation']}): mean best {accuracy['metric']} fp32 "
                      f"{accuracy['mean_best']['fp32']:.4f}, bf16 {accuracy['mean_best']['bf16']:.4f} "
                      f"(bf16 - fp32 {accuracy['bf16_minus_fp32']:+.4f})"]
    return "\n".join(lines)
