"""The torch `minirocket` model against aeon's MiniRocket, on the same split and cores.

    python -m ecg_tune.benchmarks.rocket ecg200            # UCR ECG200, official train/test
    python -m ecg_tune.benchmarks.rocket cinc              # stratified CinC 2017 subset
    python -m ecg_tune.benchmarks.rocket cinc --seeds 1 --records 400 --epochs 2   # a first look

For each seed, on the same records fitted to the same input length (zero-padded at the end or
centre-trimmed, as evaluation does):
- `aeon + ridge`: aeon's `MiniRocket(n_kernels=10_000)` fitted on the training records, then
  StandardScaler + RidgeClassifierCV (alphas 1e-3..1e3), the reference (as in `benchmark quality`);
- `ours + ridge`: the model's random-kernel features (biases fitted on the sample of training
  records the training loop would give `initialise`) with the same ridge head;
- `ours, through the loop` (`ours_model`): the `minirocket` model as the search trains it,
  `training.loop.fit` with its default closed-form ridge head, scored on the same fitted inputs
  and, for records longer than the input, with the project's record-level windowed evaluation;
- `ours, gradient head` (`ours_loop`, skipped with `--epochs 0`): the same with
  `rocket_head=gradient`, its linear head trained by the loop for `--epochs` epochs;
- optionally `ours (multi + difference) + ridge` (`--multi`): MultiRocket's operators and the
  first-difference series at the same number of features;
and once, the transform's throughput (records/s of the features alone, best of interleaved
rounds) for aeon and ours on the same threads. Needs aeon (`pip install -e '.[benchmark]'`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecg_tune.data.tensors import TensorData

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
ECG200 = SHARED / "ucr" / "ECG200" / "ECG200_TRAIN.txt"
CINC = SHARED / "cinc2017" / "training2017"


@dataclass
class RocketData:
    name: str
    tensors: TensorData
    train: np.ndarray  # positions in tensors
    test: np.ndarray
    input_length: int

    @property
    def labels(self) -> np.ndarray:
        assert self.tensors.labels is not None  # benchmark data is labelled
        return self.tensors.labels


def ucr_data(path: Path = ECG200) -> RocketData:
    """A UCR data set with its official train/test split; input length = the series length."""
    from ecg_tune.data import load
    from ecg_tune.data.tensors import to_tensors

    records = load(str(path), progress=False)
    split = np.asarray(records.split)
    tensors = to_tensors(records)
    return RocketData(path.parent.name, tensors, np.flatnonzero(split == "train"),
                      np.flatnonzero(split == "test"), int(np.median(records.lengths)))


def cinc_data(path: Path = CINC, n_records: int = 2000, input_length: int = 3000,
              test_fraction: float = 0.25, seed: int = 0) -> RocketData:
    """A class-stratified subset of CinC 2017, split (stratified) into train and test."""
    from sklearn.model_selection import train_test_split

    from ecg_tune.data import load
    from ecg_tune.data.tensors import to_tensors
    from ecg_tune.models.head import stratified_subsample

    records = load(str(path), progress=False)
    assert records.labels is not None
    chosen = stratified_subsample(records.labels, n_records, seed=seed)
    subset = records.subset(chosen)
    assert subset.labels is not None
    train, test = train_test_split(np.arange(len(subset)), test_size=test_fraction,
                                   stratify=subset.labels, random_state=seed)
    return RocketData(f"CinC 2017, {len(subset)} records", to_tensors(subset), np.sort(train),
                      np.sort(test), input_length)


def fitted_inputs(tensors: TensorData, index: np.ndarray, length: int) -> np.ndarray:
    """Records at `index` zero-padded at the end or centre-trimmed to `length`: (n, 1, length)."""
    from ecg_tune.signal.augment import fit_to_length

    signals, lengths, _ = tensors.torch_views()
    rows = torch.as_tensor(np.asarray(index))
    return fit_to_length(signals.index_select(0, rows), lengths[rows], length).numpy()[:, None, :]


def _ridge() -> Any:
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))


def ridge_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    return float((_ridge().fit(train_x, train_y).predict(test_x) == test_y).mean())


def aeon_transform(train_x: np.ndarray, seed: int, threads: int, n_kernels: int = 10_000) -> Any:
    from aeon.transformations.collection.convolution_based import MiniRocket as AeonMiniRocket

    return AeonMiniRocket(n_kernels=n_kernels, n_jobs=threads, random_state=seed).fit(train_x)


def torch_model(train_x: np.ndarray, n_classes: int, seed: int, **options: Any) -> Any:
    """The `minirocket` model with its biases fitted as the training loop fits them: on (at most)
    INIT_RECORDS training records drawn with the seed."""
    from ecg_tune.models import build_model
    from ecg_tune.training.loop import INIT_RECORDS

    torch.manual_seed(seed)
    model = build_model("minirocket", train_x.shape[1], train_x.shape[2], n_classes, **options)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(train_x), size=min(len(train_x), INIT_RECORDS), replace=False))
    model.initialise(torch.from_numpy(train_x[sample]))
    return model


def torch_features(model: Any, x: np.ndarray) -> np.ndarray:
    return model.rocket_features(torch.from_numpy(x)).numpy()


def loop_head(data: RocketData, seed: int, test_x: np.ndarray, epochs: int, lr: float,
              weight_decay: float, batch_size: int, augmentation: str, head: str = "gradient") -> dict[str, float]:
    """The model trained by the project's loop; accuracy on the fitted test inputs and with the
    record-level windowed evaluation."""
    from ecg_tune.config import make_config
    from ecg_tune.training.evaluate import record_probabilities
    from ecg_tune.training.loop import fit

    config = make_config({"model": "minirocket", "input_length": data.input_length, "epochs": epochs,
                          "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
                          "augmentation": augmentation, "seed": seed, "rocket_head": head})
    started = time.perf_counter()
    *_, last = fit(config, data.tensors, data.train, None, device="cpu")
    seconds = time.perf_counter() - started
    network = last.network.eval()
    with torch.inference_mode():
        logits = network(torch.from_numpy(test_x[:, 0, :]))
    windowed, _ = record_probabilities(network, None, data.tensors, data.test, "zscore",
                                       config.window_overlap, torch.device("cpu"))
    truth = data.labels[data.test]
    return {"accuracy": float((logits.argmax(1).numpy() == truth).mean()),
            "windowed_accuracy": float((windowed.argmax(1) == truth).mean()),
            "train_seconds": seconds}


def throughput(x: np.ndarray, threads: int, rounds: int = 3) -> dict[str, float]:
    """Records/s of the feature transform alone (10,000 features), aeon against ours (PPV, and
    multi + difference), best of interleaved rounds."""
    aeon = aeon_transform(x[:64], 0, threads)
    ours = torch_model(x[:64], 2, 0)
    multi = torch_model(x[:64], 2, 0, rocket_pooling="multi", rocket_difference=True)
    aeon.transform(x[:4])  # numba compiles on first use
    runs: dict[str, Callable[[], object]] = {"aeon": lambda: aeon.transform(x),
                                             "ours": lambda: torch_features(ours, x),
                                             "ours_multi_difference": lambda: torch_features(multi, x)}
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return {f"{name}_records_per_s": len(x) / seconds for name, seconds in best.items()} | {
        "records": len(x), "input_length": int(x.shape[-1]), "threads": threads}


def run(data: RocketData, seeds: list[int], threads: int, epochs: int, lr: float,
        weight_decay: float, batch_size: int, augmentation: str, multi: bool,
        speed: bool = True, log: Callable[[str], None] = print, with_model: bool = True) -> dict[str, Any]:
    """Accuracy per seed (none when `seeds` is empty) and, when `speed`, the throughput; `with_model`:
    also the model trained by the loop (its windowed ridge fit is the slowest part on CinC)."""
    torch.set_num_threads(threads)
    train_x = fitted_inputs(data.tensors, data.train, data.input_length)
    test_x = fitted_inputs(data.tensors, data.test, data.input_length)
    train_y, test_y = data.labels[data.train], data.labels[data.test]
    n_classes = len(data.tensors.classes)
    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        aeon = aeon_transform(train_x, seed, threads)
        row["aeon_ridge"] = ridge_accuracy(aeon.transform(train_x), train_y, aeon.transform(test_x), test_y)
        model = torch_model(train_x, n_classes, seed)
        row["ours_ridge"] = ridge_accuracy(torch_features(model, train_x), train_y,
                                           torch_features(model, test_x), test_y)
        if multi:
            model = torch_model(train_x, n_classes, seed, rocket_pooling="multi", rocket_difference=True)
            row["ours_multi_ridge"] = ridge_accuracy(torch_features(model, train_x), train_y,
                                                     torch_features(model, test_x), test_y)
        if with_model:
            row["ours_model"] = loop_head(data, seed, test_x, 1, lr, weight_decay, batch_size, "none", head="ridge")
        if epochs:
            row["ours_loop"] = loop_head(data, seed, test_x, epochs, lr, weight_decay, batch_size, augmentation)
        log(json.dumps(row))
        per_seed.append(row)
    rates = throughput(np.concatenate([train_x, test_x]), threads) if speed else {}
    log(json.dumps(rates))
    return {"data": data.name, "train": len(data.train), "test": len(data.test),
            "input_length": data.input_length, "seeds": seeds,
            "loop_head": {"epochs": epochs, "lr": lr, "weight_decay": weight_decay,
                          "batch_size": batch_size, "augmentation": augmentation},
            "per_seed": per_seed, "summary": summary(per_seed), "throughput": rates,
            "machine": {"cpus": os.cpu_count(), "threads": threads, "torch": torch.__version__,
                        "python": platform.python_version()},
            "date": dt.date.today().isoformat()}


def summary(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation over seeds of every accuracy measured."""
    values: dict[str, list[float]] = {}
    for row in per_seed:
        for key, value in row.items():
            if key == "seed":
                continue
            if isinstance(value, dict):
                for sub in ("accuracy", "windowed_accuracy", "train_seconds"):
                    values.setdefault(f"{key}_{sub}", []).append(value[sub])
            else:
                values.setdefault(key, []).append(value)
    return {key: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
            for key, v in values.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecg_tune.benchmarks.rocket", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", choices=["ecg200", "cinc"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--records", type=int, default=2000, help="CinC: records in the subset")
    parser.add_argument("--input-length", type=int, default=3000, help="CinC: samples per input")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--epochs", type=int, default=40, help="gradient head epochs (0: skip it)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augmentation", default="none")
    parser.add_argument("--multi", action="store_true", help="also multi + difference features with ridge")
    parser.add_argument("--no-model", action="store_true",
                        help="skip the model trained by the loop (features + ridge only)")
    parser.add_argument("--part", choices=["all", "accuracy", "throughput"], default="all",
                        help="measure only the accuracy or only the throughput")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file")
    args = parser.parse_args(argv)
    data = ucr_data() if args.data == "ecg200" else cinc_data(n_records=args.records,
                                                               input_length=args.input_length)
    seeds = [] if args.part == "throughput" else list(range(args.first_seed, args.first_seed + args.seeds))
    result = run(data, seeds, args.threads, args.epochs, args.lr, args.weight_decay,
                 args.batch_size, args.augmentation, args.multi, speed=args.part != "accuracy",
                 with_model=not args.no_model)
    result["command"] = "python -m ecg_tune.benchmarks.rocket " + " ".join(argv if argv is not None else [])
    for key, stat in result["summary"].items():
        print(f"{key:40s} {stat['mean']:.4f} ± {stat['sd']:.4f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
