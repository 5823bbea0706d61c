"""`benchmark pipeline`: input-pipeline and training throughput against the seed and the limit.

Measured in one run, on the same records, each figure the best of `rounds` interleaved rounds
(the machines here are shared; the best round is the least disturbed one):
- data path samples/s per transform with the `all` policy: the seed's per-sample pipeline
  (pandas row, numpy augment, pywt per record) against the batched one (fetch by index, augment
  and transform on tensors);
- training throughput of SimpleCNN with `wavelet db2 level 6` + `all`: the seed's pipeline
  feeding the same network, this project's epoch (the training loop's own figure), and the limit:
  the same network trained on precomputed tensors of the transform's output shape, so that the
  data path costs nothing;
- where a step of the batched pipeline spends its time (fetch, augment, transform, forward/backward).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data import Dataset
from ecg_tune.benchmarks.seed_pipeline import seed_batches
from ecg_tune.signal.augment import AugmentParams, BatchAugmenter
from ecg_tune.training.loop import fit, train_step
from ecg_tune.training.network import build_network

TRANSFORMS = {
    "none": {"transform": "none"},
    "wavelet db2 L6": {"transform": "wavelet", "wavelet": "db2", "levels": 6},
    "fourier": {"transform": "fourier"},
}


def run_pipeline_benchmark(dataset: Dataset, records: int = 1024, rounds: int = 3,
                           input_length: int = 9000, batch_size: int = 32,
                           log: Callable[[str], None] = print) -> dict:
    tensors = dataset.tensors
    train = dataset.index("train")[:records]
    records = len(train) - len(train) % batch_size
    train = train[:records]
    frame = pd.DataFrame({"signal": [dataset.records.signals[i] for i in train],
                          "label": tensors.labels[train]})
    signals, lengths, _ = tensors.torch_views()
    result: dict = {
        "data": {"source": dataset.records.source, "records": records, "input_length": input_length,
                 "batch_size": batch_size, "rounds": rounds},
        "data_path": {}, "training": {}, "breakdown_us_per_sample": {},
    }

    # Data path alone, per transform.
    warm = train[: 4 * batch_size]
    for label, values in TRANSFORMS.items():
        config = make_config({"input_length": input_length, "augmentation": "all", **values})
        network = build_network(config, input_length, len(tensors.classes))
        augmenter = BatchAugmenter("all", input_length, fit="pad", params=AugmentParams())
        # Warm-up: first calls pay one-off costs (oneDNN kernels per shape, the noise bank).
        _drain(_batched_batches(network, augmenter, signals, lengths, warm, batch_size))
        _drain(seed_batches(frame.iloc[: len(warm)], batch_size, input_length, config.transform))
        batched, seed = [], []
        for _ in range(rounds):
            seed.append(_rate(records, lambda: _drain(seed_batches(frame, batch_size, input_length,
                                                                   config.transform))))
            batched.append(_rate(records, lambda: _drain(_batched_batches(
                network, augmenter, signals, lengths, train, batch_size))))
        result["data_path"][label] = {"seed_samples_per_s": max(seed), "batched_samples_per_s": max(batched),
                                      "speedup": max(batched) / max(seed)}
        log(f"data path {label:15s} seed {max(seed):8.0f}/s  batched {max(batched):8.0f}/s  "
            f"x{max(batched) / max(seed):.1f}")

    # Training throughput: seed pipeline, this project's epoch, and the limit.
    config = make_config({"input_length": input_length, "augmentation": "all", "epochs": 1,
                          "batch_size": batch_size, "transform": "wavelet", "wavelet": "db2",
                          "levels": 6, "model": "simple_cnn"})
    n_classes = len(tensors.classes)
    shape = build_network(config, input_length, n_classes).transform.output_shape
    precomputed = torch.randn(records, *shape)
    labels = torch.as_tensor(tensors.labels[train])
    limit, ours, seed_training = [], [], []
    _limit_epoch(config, input_length, n_classes, precomputed[: len(warm)], labels[: len(warm)], batch_size)
    list(fit(config, tensors, warm, None, device="cpu"))
    for round_number in range(rounds):
        limit.append(_rate(records, lambda: _limit_epoch(config, input_length, n_classes, precomputed,
                                                         labels, batch_size)))
        (epoch,) = fit(config.with_updates(seed=round_number), tensors, train, None, device="cpu")
        ours.append(epoch.metrics["train_samples_per_s"])
        seed_training.append(_rate(records, lambda: _seed_epoch(config, input_length, n_classes, frame,
                                                                batch_size)))
    result["training"] = {
        "model": "simple_cnn, wavelet db2 level 6 (input 143), augmentation all",
        "limit_samples_per_s": max(limit),
        "batched_samples_per_s": max(ours),
        "seed_samples_per_s": max(seed_training),
        "batched_fraction_of_limit": max(ours) / max(limit),
        "seed_fraction_of_limit": max(seed_training) / max(limit),
    }
    log(f"training: limit {max(limit):.0f}/s, batched epoch {max(ours):.0f}/s "
        f"({max(ours) / max(limit):.0%} of the limit), seed pipeline {max(seed_training):.0f}/s "
        f"({max(seed_training) / max(limit):.0%})")

    result["breakdown_us_per_sample"] = _breakdown(config, input_length, n_classes, signals, lengths,
                                                   labels, train, batch_size, rounds)
    log("breakdown of a batched step (us/sample): " + ", ".join(
        f"{k} {v:.0f}" for k, v in result["breakdown_us_per_sample"].items()))
    return result


def _rate(samples: int, work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return samples / (time.perf_counter() - started)


def _drain(batches) -> None:
    for _ in batches:
        pass


@torch.no_grad()
def _batched_batches(network, augmenter, signals, lengths, train, batch_size):
    generator = torch.Generator().manual_seed(0)
    for begin in range(0, len(train), batch_size):
        rows = torch.as_tensor(train[begin:begin + batch_size])
        yield network.transform(augmenter(signals.index_select(0, rows), lengths[rows], generator))


def _limit_epoch(config: TrainConfig, input_length: int, n_classes: int, precomputed: torch.Tensor,
                 labels: torch.Tensor, batch_size: int) -> None:
    torch.manual_seed(0)
    model = build_network(config, input_length, n_classes).model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss()
    for begin in range(0, len(precomputed), batch_size):
        train_step(model, optimizer, criterion, precomputed[begin:begin + batch_size],
                   labels[begin:begin + batch_size])


def _seed_epoch(config: TrainConfig, input_length: int, n_classes: int, frame: pd.DataFrame,
                batch_size: int) -> None:
    torch.manual_seed(0)
    model = build_network(config, input_length, n_classes).model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss()
    for x, y in seed_batches(frame, batch_size, input_length, "wavelet"):
        train_step(model, optimizer, criterion, x, y)


def _breakdown(config: TrainConfig, input_length: int, n_classes: int, signals: torch.Tensor,
               lengths: torch.Tensor, labels: torch.Tensor, train: np.ndarray, batch_size: int,
               rounds: int) -> dict[str, float]:
    network = build_network(config, input_length, n_classes)
    augmenter = BatchAugmenter("all", input_length, fit="pad", params=AugmentParams())
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    best = {"fetch": np.inf, "augment": np.inf, "transform": np.inf, "forward_backward": np.inf}
    for _ in range(rounds):
        spent = dict.fromkeys(best, 0.0)
        for begin in range(0, len(train), batch_size):
            rows = torch.as_tensor(train[begin:begin + batch_size])
            t0 = time.perf_counter()
            x = signals.index_select(0, rows)
            t1 = time.perf_counter()
            x = augmenter(x, lengths[rows], generator)
            t2 = time.perf_counter()
            with torch.no_grad():
                x = network.transform(x)
            t3 = time.perf_counter()
            train_step(network.model, optimizer, criterion, x, labels[begin:begin + batch_size])
            t4 = time.perf_counter()
            for key, seconds in zip(best, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[key] += seconds
        for key in best:
            best[key] = min(best[key], spent[key] / len(train) * 1e6)
    return best


def plot(result: dict, path) -> None:
    """Two panels: the data path per transform (seed vs batched), and training against the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = list(result["data_path"])
    x = np.arange(len(labels))
    seed = [result["data_path"][k]["seed_samples_per_s"] for k in labels]
    batched = [result["data_path"][k]["batched_samples_per_s"] for k in labels]
    left.bar(x - 0.2, seed, 0.4, label="seed, per sample")
    left.bar(x + 0.2, batched, 0.4, label="batched (this project)")
    left.set(xticks=x, xticklabels=labels, ylabel="samples/s", title="Data path, augmentation 'all'")
    left.legend(fontsize=8)
    training = result["training"]
    names = ["limit\n(precomputed)", "this project's\nepoch", "seed\npipeline"]
    rates = [training["limit_samples_per_s"], training["batched_samples_per_s"], training["seed_samples_per_s"]]
    bars = right.bar(names, rates, color=["0.6", "C1", "C0"])
    for bar, rate in zip(bars, rates):
        right.annotate(f"{rate / rates[0]:.0%}", (bar.get_x() + bar.get_width() / 2, rate),
                       ha="center", va="bottom", fontsize=9)
    right.set(ylabel="training samples/s", title="Training throughput against the limit")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def table(result: dict) -> str:
    lines = ["| data path (augmentation all) | seed samples/s | batched samples/s | speed-up |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['seed_samples_per_s']:.0f} | {r['batched_samples_per_s']:.0f} | {r['speedup']:.1f}x |"
              for name, r in result["data_path"].items()]
    t = result["training"]
    lines += ["", "| training | samples/s | of the limit |", "|---|---:|---:|",
              f"| limit (precomputed input) | {t['limit_samples_per_s']:.0f} | 100 % |",
              f"| this project's epoch | {t['batched_samples_per_s']:.0f} | {t['batched_fraction_of_limit']:.0%} |",
              f"| seed pipeline | {t['seed_samples_per_s']:.0f} | {t['seed_fraction_of_limit']:.0%} |",
              "", "| step part | us/sample |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["breakdown_us_per_sample"].items()]
    return "\n".join(lines)
