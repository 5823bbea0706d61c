"""`benchmark pipeline`: input-pipeline and training throughput against the seed and the limit.

Measured in one run, on the same records, each figure the best of `rounds` interleaved rounds
(the machines here are shared; the best round is the least disturbed one):
- data path samples/s per transform with the `all` policy: the seed's per-sample pipeline
  (pandas row, numpy augment, pywt per record) against the batched one (rows read by index in
  place, augment and transform on tensors);
- training throughput of SimpleCNN with `wavelet db2 level 6` + `all`: the seed's pipeline
  feeding the same network, this project's epoch (the training loop's own figure), and the limit:
  the same network trained on precomputed tensors of the transform's output shape, so that the
  data path costs nothing;
- where a step of the batched pipeline spends its time (batch rows, draws, augment, transform,
  forward/backward), the augmentation reading the batch's rows in place as the loop does.

The training figures run with torch's threads set to `threads` (1, what a trial of one CPU
gets; restored afterwards): with two threads on a machine whose other core is busy, a tiny
model's step slowed ~12x (the threads wait on each other), which made the limit and the epoch
measure the neighbours rather than the code. The limit's model and optimiser are built before
its clock starts, as the loop's are before the epoch's.
- the DWT alone (`run_dwt_benchmark`): this project's `WaveletTransform` against ptwt.wavedec
  (the PyTorch wavelet toolbox, optional: skipped with a one-line note when it is not installed)
  and pywt.wavedec, on one (batch, input_length) float32 batch, no_grad, per wavelet, level and
  output. For "bands" ptwt is timed twice: its raw coefficient list, and that list brought to
  WaveletTransform's time-aligned (B, bands, length) layout by the same index gather (the
  like-for-like replacement). pywt is timed on the numpy batch, raw coefficients only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pywt
import torch
from torch import nn

from ecg_tune.benchmarks.seed_pipeline import seed_batches
from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data import Dataset
from ecg_tune.data.tensors import TensorData
from ecg_tune.signal.augment import AugmentParams, BatchAugmenter
from ecg_tune.signal.transforms import WaveletTransform
from ecg_tune.training.loop import fit, train_step
from ecg_tune.training.network import build_network

TRANSFORMS: dict[str, dict[str, Any]] = {
    "none": {"transform": "none"},
    "wavelet db2 L6": {"transform": "wavelet", "wavelet": "db2", "levels": 6},
    "fourier": {"transform": "fourier"},
}

# (wavelet, levels, output) for "DWT alone": the wavelets and the level range (3-8) of the full
# search space, both outputs.
DWT_CASES = (
    ("db2", 6, "approx"), ("db2", 6, "bands"),
    ("db4", 4, "approx"), ("db4", 4, "bands"),
    ("sym4", 8, "approx"), ("sym4", 8, "bands"),
    ("haar", 3, "approx"), ("haar", 3, "bands"),
    ("coif1", 5, "approx"), ("coif1", 5, "bands"),
)


def run_pipeline_benchmark(dataset: Dataset, records: int = 1024, rounds: int = 3,
                           input_length: int = 9000, batch_size: int = 32,
                           log: Callable[[str], None] = print, *,
                           dwt_cases: tuple[tuple[str, int, str], ...] | None = DWT_CASES,
                           threads: int | None = 1) -> dict:
    """Every measurement above; `threads`: torch's CPU threads meanwhile (None: as they are)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_pipeline_benchmark(dataset, records, rounds, input_length, batch_size, log, dwt_cases)
    finally:
        torch.set_num_threads(previous)


def _run_pipeline_benchmark(dataset: Dataset, records: int, rounds: int, input_length: int, batch_size: int,
                            log: Callable[[str], None],
                            dwt_cases: tuple[tuple[str, int, str], ...] | None) -> dict:
    tensors = dataset.tensors
    assert tensors.labels is not None  # a prepared dataset is labelled
    train = dataset.index("train")[:records]
    records = len(train) - len(train) % batch_size
    train = train[:records]
    frame = pd.DataFrame({"signal": [dataset.records.signals[i] for i in train],
                          "label": tensors.labels[train]})
    signals, lengths, _ = tensors.torch_views()
    result: dict = {
        "data": {"source": dataset.records.source, "records": records, "input_length": input_length,
                 "batch_size": batch_size, "rounds": rounds, "torch_threads": torch.get_num_threads()},
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
        batched: list[float] = []
        seed: list[float] = []
        for _ in range(rounds):
            # The lambdas run within this iteration, so late binding of the loop variables is harmless.
            seed.append(_rate(records, lambda: _drain(seed_batches(frame, batch_size, input_length,
                                                                   config.transform))))  # noqa: B023
            batched.append(_rate(records, lambda: _drain(_batched_batches(
                network, augmenter, signals, lengths, train, batch_size))))  # noqa: B023
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
    limit: list[float] = []
    limit_cpu: list[float] = []
    ours: list[float] = []
    ours_cpu: list[float] = []
    seed_training: list[float] = []
    _limit_epoch(config, input_length, n_classes, precomputed[: len(warm)], labels[: len(warm)], batch_size)
    list(fit(config, tensors, warm, None, device="cpu"))
    for round_number in range(rounds):
        wall, cpu = _limit_epoch(config, input_length, n_classes, precomputed, labels, batch_size)
        limit.append(wall)
        limit_cpu.append(cpu)
        rate, cpu = _loop_epoch(config.with_updates(seed=round_number), tensors, train)
        ours.append(rate)
        ours_cpu.append(cpu)
        seed_training.append(_rate(records, lambda: _seed_epoch(config, input_length, n_classes, frame,
                                                                batch_size)))
    result["training"] = {
        "model": "simple_cnn, wavelet db2 level 6 (input 143), augmentation all",
        "limit_samples_per_s": max(limit),
        "batched_samples_per_s": max(ours),
        "seed_samples_per_s": max(seed_training),
        "batched_fraction_of_limit": max(ours) / max(limit),
        "seed_fraction_of_limit": max(seed_training) / max(limit),
        # Per CPU second of the (one) training thread: what a busy machine's preemption does not
        # reach (wall-clock best-of-rounds favours the shorter limit epoch when cores are shared).
        "limit_samples_per_cpu_s": max(limit_cpu),
        "batched_samples_per_cpu_s": max(ours_cpu),
        "batched_fraction_of_limit_cpu": max(ours_cpu) / max(limit_cpu),
    }
    log(f"training: limit {max(limit):.0f}/s, batched epoch {max(ours):.0f}/s "
        f"({max(ours) / max(limit):.0%} of the limit; per CPU second "
        f"{max(ours_cpu) / max(limit_cpu):.0%}), seed pipeline {max(seed_training):.0f}/s "
        f"({max(seed_training) / max(limit):.0%})")

    result["breakdown_us_per_sample"] = _breakdown(config, input_length, n_classes, signals, lengths,
                                                   labels, train, batch_size, rounds)
    log("breakdown of a batched step (us/sample): " + ", ".join(
        f"{k} {v:.0f}" for k, v in result["breakdown_us_per_sample"].items()))

    if dwt_cases:
        result["dwt_alone"] = run_dwt_benchmark(input_length, batch_size, rounds, dwt_cases, log=log)
    return result


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _import_ptwt():
    try:
        import ptwt
    except ImportError:
        return None
    return ptwt


def run_dwt_benchmark(input_length: int = 9000, batch_size: int = 32, rounds: int = 3,
                      cases: tuple[tuple[str, int, str], ...] = DWT_CASES, *,
                      seconds_per_measurement: float = 0.15, use_ptwt: bool = True,
                      log: Callable[[str], None] = print) -> dict:
    """The DWT alone: samples/s of WaveletTransform, ptwt.wavedec and pywt.wavedec per case.

    One random (batch_size, input_length) float32 batch on the CPU, no_grad. Each measurement
    repeats one call enough times to last about `seconds_per_measurement` (calibrated once per
    implementation and case after warm-up); every round measures every case and implementation,
    in an order rotated from round to round, and the best round counts. Also recorded per case:
    the largest absolute difference of each float32 output from pywt in float64 (on the same
    batch, in WaveletTransform's layout), and of ptwt in float64 from pywt in float64.
    """
    ptwt = _import_ptwt() if use_ptwt else None
    if ptwt is None:
        log("DWT alone: ptwt is not installed (pip install ptwt); measuring WaveletTransform and pywt only")
    x = torch.randn(batch_size, input_length, generator=torch.Generator().manual_seed(0))
    x_numpy = x.numpy()
    x64 = x.double()
    result: dict = {"input_length": input_length, "batch_size": batch_size, "rounds": rounds,
                    "dtype": "float32", "device": "cpu",
                    "ptwt_version": _version("ptwt") if ptwt else None,
                    "pywt_version": pywt.__version__, "cases": {}}
    timed: dict[tuple[str, str], Callable[[], object]] = {}
    for wavelet_name, levels, output in cases:
        label = f"{wavelet_name} L{levels} {output}"
        wavelet = pywt.Wavelet(wavelet_name)
        module = WaveletTransform(input_length, wavelet=wavelet_name, levels=levels, wavelet_output=output)
        bands = len(module.band_names)
        # Index into the pywt-order concatenation of all bands that gives WaveletTransform's layout.
        if output == "bands":
            offsets = torch.as_tensor(np.cumsum([0] + module.band_lengths[:-1]))
            assert module.band_index is not None  # set for the bands output
            gather = (module.band_index + offsets[:, None]).reshape(-1)
        else:
            gather = None

        def layout(coeffs, gather=gather, bands=bands, output=output):
            if output == "approx":
                return coeffs[0].unsqueeze(1)
            return torch.cat(coeffs, dim=1).index_select(1, gather).view(coeffs[0].shape[0], bands, -1)

        with torch.no_grad():
            reference = layout([torch.from_numpy(c) for c in
                                pywt.wavedec(x64.numpy(), wavelet, mode="symmetric", level=levels, axis=-1)])
            case = {"wavelet": wavelet_name, "levels": levels, "output": output,
                    "output_shape": list(module.output_shape),
                    "custom_max_abs_diff": float((module(x).double() - reference).abs().max())}
            # The ignores below: mypy cannot infer a lambda whose defaults bind loop variables
            # (python/mypy#15459); each is a Callable[[], object].
            timed[label, "custom"] = lambda module=module: module(x)  # type: ignore[misc]
            timed[label, "pywt"] = (lambda wavelet=wavelet, levels=levels:  # type: ignore[misc]
                                    pywt.wavedec(x_numpy, wavelet, mode="symmetric", level=levels, axis=-1))
            if ptwt is not None:
                def run_ptwt(data=x, wavelet=wavelet, levels=levels):
                    return ptwt.wavedec(data, wavelet, mode="symmetric", level=levels)

                case["ptwt_max_abs_diff"] = float((layout(run_ptwt()).double() - reference).abs().max())
                case["ptwt_float64_max_abs_diff"] = float((layout(run_ptwt(x64)) - reference).abs().max())
                if output == "approx":
                    timed[label, "ptwt"] = lambda run_ptwt=run_ptwt: run_ptwt()[0].unsqueeze(1)  # type: ignore[misc]
                else:
                    timed[label, "ptwt"] = run_ptwt
                    timed[label, "ptwt_aligned"] = (
                        lambda run_ptwt=run_ptwt, layout=layout: layout(run_ptwt()))  # type: ignore[misc]
        result["cases"][label] = case

    # Warm-up (first calls pay one-off costs per shape), then calibrate the calls per measurement.
    calls: dict[tuple[str, str], int] = {}
    with torch.no_grad():
        for key, work in timed.items():
            for _ in range(3):
                work()
            started = time.perf_counter()
            work()
            once = max(time.perf_counter() - started, 1e-6)
            calls[key] = max(3, math.ceil(seconds_per_measurement / once))
        best = dict.fromkeys(timed, 0.0)
        keys = list(timed)
        for round_number in range(rounds):
            shift = round_number % len(keys)
            for key in keys[shift:] + keys[:shift]:
                work, n = timed[key], calls[key]
                started = time.perf_counter()
                for _ in range(n):
                    work()
                best[key] = max(best[key], n * batch_size / (time.perf_counter() - started))

    for label, case in result["cases"].items():
        for impl in ("custom", "ptwt", "ptwt_aligned", "pywt"):
            if (label, impl) in best:
                case[f"{impl}_samples_per_s"] = best[label, impl]
        if "ptwt_samples_per_s" in case:
            like = case.get("ptwt_aligned_samples_per_s", case["ptwt_samples_per_s"])
            case["custom_over_ptwt"] = case["custom_samples_per_s"] / like
            if case["output"] == "bands":
                case["custom_over_ptwt_raw"] = case["custom_samples_per_s"] / case["ptwt_samples_per_s"]
        case["custom_over_pywt"] = case["custom_samples_per_s"] / case["pywt_samples_per_s"]
        log(f"DWT alone {label:17s} custom {case['custom_samples_per_s']:9.0f}/s  "
            + (f"ptwt {case.get('ptwt_aligned_samples_per_s', case['ptwt_samples_per_s']):9.0f}/s "
               f"(x{case['custom_over_ptwt']:.2f})  " if "ptwt_samples_per_s" in case else "")
            + f"pywt {case['pywt_samples_per_s']:9.0f}/s")
    return result


def _rate(samples: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return samples / (time.perf_counter() - started)


def _drain(batches: Iterable[object]) -> None:
    for _ in batches:
        pass


@torch.no_grad()
def _batched_batches(network, augmenter, signals, lengths, train, batch_size):
    # As the training loop draws them: rows read in place into one reused buffer.
    generator = torch.Generator().manual_seed(0)
    buffer = torch.empty(batch_size, augmenter.input_length)
    for begin in range(0, len(train), batch_size):
        rows = torch.as_tensor(train[begin:begin + batch_size])
        x = augmenter(signals, lengths[rows], generator, out=buffer[:len(rows)], rows=rows)
        yield network.transform(x)


def _loop_epoch(config: TrainConfig, tensors: TensorData, train: np.ndarray) -> tuple[float, float]:
    """One epoch of the training loop: its own `train_samples_per_s` (wall clock) and samples per
    CPU second of this thread, less what `fit` costs around the epoch (building the network, the
    optimiser and the augmenter), measured as a `fit` of one small batch just before."""
    started = time.thread_time()
    list(fit(config, tensors, train[:2], None, device="cpu"))
    setup = time.thread_time() - started
    started = time.thread_time()
    (epoch,) = fit(config, tensors, train, None, device="cpu")
    cpu = time.thread_time() - started - setup
    return epoch.metrics["train_samples_per_s"], len(train) / max(cpu, 1e-9)


def _limit_epoch(config: TrainConfig, input_length: int, n_classes: int, precomputed: torch.Tensor,
                 labels: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Samples per second and per CPU second of one epoch of steps on precomputed inputs; the
    clocks run over the steps only (the loop's `train_samples_per_s` also excludes building the
    model and optimiser)."""
    torch.manual_seed(0)
    model = build_network(config, input_length, n_classes).model
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    criterion = nn.CrossEntropyLoss()
    model.train()
    started, started_cpu = time.perf_counter(), time.thread_time()
    for begin in range(0, len(precomputed), batch_size):
        train_step(model, optimizer, criterion, precomputed[begin:begin + batch_size],
                   labels[begin:begin + batch_size])
    cpu = time.thread_time() - started_cpu
    return len(precomputed) / (time.perf_counter() - started), len(precomputed) / max(cpu, 1e-9)


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
    buffer = torch.empty(batch_size, input_length)
    network.train()
    # The loop's batch, split: the batch's lengths and labels by row, the draws (host), the
    # augmentation reading the rows in place, the transform, the step.
    best = {"rows": np.inf, "draws": np.inf, "augment": np.inf, "transform": np.inf,
            "forward_backward": np.inf}
    for _ in range(rounds):
        spent = dict.fromkeys(best, 0.0)
        for begin in range(0, len(train), batch_size):
            t0 = time.perf_counter()
            rows = torch.as_tensor(train[begin:begin + batch_size])
            batch_lengths, y = lengths[rows], labels[begin:begin + batch_size]
            t1 = time.perf_counter()
            draws = augmenter.sample(batch_lengths, generator)
            t2 = time.perf_counter()
            x = augmenter.apply(signals, batch_lengths, draws, out=buffer[:len(rows)], rows=rows)
            t3 = time.perf_counter()
            with torch.no_grad():
                x = network.transform(x)
            t4 = time.perf_counter()
            train_step(network.model, optimizer, criterion, x, y)
            t5 = time.perf_counter()
            for key, seconds in zip(best, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                spent[key] += seconds
        for key in best:
            best[key] = min(best[key], spent[key] / len(train) * 1e6)
    return best


def plot(result: dict, path: Path) -> None:
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
    for bar, rate in zip(bars, rates, strict=False):
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
              f"| per CPU second: limit, epoch | {t['limit_samples_per_cpu_s']:.0f}, "
              f"{t['batched_samples_per_cpu_s']:.0f} | {t['batched_fraction_of_limit_cpu']:.0%} |",
              f"| seed pipeline | {t['seed_samples_per_s']:.0f} | {t['seed_fraction_of_limit']:.0%} |",
              "", "| step part | us/sample |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["breakdown_us_per_sample"].items()]
    lines.append(f"| (the limit's whole step) | {1e6 / t['limit_samples_per_s']:.0f} |")
    if result.get("dwt_alone"):
        lines += ["", dwt_table(result["dwt_alone"])]
    return "\n".join(lines)


def dwt_table(dwt: dict) -> str:
    """The "DWT alone" figures as a markdown table (samples/s; ratios of WaveletTransform to ptwt)."""
    def rate(case: dict, key: str) -> str:
        return f"{case[key]:,.0f}" if key in case else "-"

    def ratio(case: dict, key: str) -> str:
        return f"{case[key]:.2f}x" if key in case else "-"

    header = (f"DWT alone: batch {dwt['batch_size']} x {dwt['input_length']} float32, CPU, no_grad, "
              f"best of {dwt['rounds']} interleaved rounds" + ("" if dwt.get("ptwt_version") else
                                                              " (ptwt not installed)"))
    lines = [header, "",
             "| wavelet, levels, output | WaveletTransform | ptwt | ptwt + alignment | pywt "
             "| WaveletTransform / ptwt | max abs diff vs pywt float64 (ours / ptwt) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, case in dwt["cases"].items():
        diffs = f"{case['custom_max_abs_diff']:.1e} / " + (
            f"{case['ptwt_max_abs_diff']:.1e}" if "ptwt_max_abs_diff" in case else "-")
        like = ratio(case, "custom_over_ptwt")
        if "custom_over_ptwt_raw" in case:
            like += f" ({case['custom_over_ptwt_raw']:.2f}x raw)"
        lines.append(f"| {label} | {rate(case, 'custom_samples_per_s')} | {rate(case, 'ptwt_samples_per_s')} "
                     f"| {rate(case, 'ptwt_aligned_samples_per_s')} | {rate(case, 'pywt_samples_per_s')} "
                     f"| {like} | {diffs} |")
    return "\n".join(lines)
