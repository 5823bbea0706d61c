"""`ecg-tune train`: one configuration, trained with the loop and printed epoch by epoch.

The way to debug a config without Ray. With `--out`, it also writes the split it used
(`split.csv`), the per-epoch metrics (`history.json`) and the last state (`checkpoint.pt`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TextIO

import torch

from ecg_tune.config import TrainConfig
from ecg_tune.data import Dataset
from ecg_tune.data.split import save_split
from ecg_tune.training.loop import fit, resolve_input_length
from ecg_tune.training.metrics import ranking_metric
from ecg_tune.training.reported import BF16


def train_one(config: TrainConfig, dataset: Dataset, out: Path | None = None,
              device: str | None = None, stream: TextIO | None = None) -> list[dict]:
    """Train and print one line per epoch; returns the per-epoch metrics."""
    stream = stream or sys.stdout
    train_index, val_index = dataset.index("train"), dataset.index("val")
    tensors = dataset.tensors
    metric = ranking_metric(tensors.classes)
    input_length = resolve_input_length(config, tensors, train_index)
    print(f"data: {dataset.summary()}", file=stream)
    print(f"config: model {config.model}{_options(config, 'model')}, transform {config.transform}"
          f"{_options(config, 'transform')}, augmentation {config.augmentation}, fit {config.fit}, "
          f"input length {input_length}, {config.epochs} epochs", file=stream)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_split(dataset.records, dataset.split, out / "split.csv")
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    history = []
    for result in fit(config, tensors, train_index, val_index, device=device):
        m = result.metrics
        history.append(m)
        extra = f" {metric} {m[metric]:.3f}" if metric in m and metric != "val_macro_f1" else ""
        print(f"epoch {result.epoch:3d}  train_loss {m['train_loss']:.4f}  val_loss {m['val_loss']:.4f}  "
              f"val_accuracy {m['val_accuracy']:.3f}  val_macro_f1 {m['val_macro_f1']:.3f}{extra}  "
              f"lr {m['lr']:.2g}  {m['epoch_seconds']:.1f} s ({m['train_samples_per_s']:.0f} samples/s)"
              f"{'  bf16' if m.get(BF16) else ''}",
              file=stream, flush=True)
        if out is not None:
            (out / "history.json").write_text(json.dumps(history, indent=2))
            torch.save(result.state(), out / "checkpoint.pt")
    return history


def _options(config: TrainConfig, key: str) -> str:
    """The options of the part named under `key`, as ` (name value, ...)` (empty if none)."""
    options = config.part_options(key)
    return f" ({', '.join(f'{k} {v}' for k, v in options.items())})" if options else ""
