"""A finished search's results as files: `best_config.json`, `trials.csv`, `trials.parquet`.

A trial's score is its best epoch for the ranking metric (ASHA may stop it later, and a model is
delivered from its best epoch), so `best_config.json` records the epoch where the winner peaked.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ecg_tune.errors import EcgTuneError
from ecg_tune.search.trainable import sampled_values, trial_config

# Metrics where lower is better; every other reported metric is a score.
LOWER_IS_BETTER = ("loss",)
# Reported per epoch but not metrics of the model.
NOT_METRICS = {"epoch", "lr", "epoch_seconds", "train_samples_per_s", "training_iteration",
               "time_this_iter_s", "time_total_s", "timestamp", "time_since_restore",
               "iterations_since_restore", "pid", "done", "checkpoint_dir_name"}


def trial_rows(results, metric: str, max_epochs: int) -> list[dict]:
    """One summary per trial: id, status, epochs, sampled config, final and best metrics."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        epochs = 0 if history is None or history.empty else int(history["training_iteration"].max())
        if result.error is not None:
            status = "errored"
        elif epochs >= max_epochs:
            status = "completed"
        else:
            status = "stopped"
        row = {"trial_id": trial_id, "status": status, "epochs": epochs,
               "config": sampled_values(result.config or {}), "final": {}, "best": {}, "best_epoch": None}
        if epochs:
            numeric = [c for c in history.columns
                       if c not in NOT_METRICS and not c.startswith("config/")
                       and pd.api.types.is_numeric_dtype(history[c])]
            last = history.iloc[-1]
            for column in numeric:
                values = history[column]
                row["final"][column] = float(last[column])
                lower = any(word in column for word in LOWER_IS_BETTER)
                row["best"][column] = float(values.min() if lower else values.max())
            if metric in history.columns and history[metric].notna().any():
                peak = history.loc[history[metric].idxmax()]
                row["best_epoch"] = int(peak["training_iteration"])
                row["peak_metrics"] = {c: float(peak[c]) for c in numeric}
        rows.append(row)
    return rows


def write_results(results, out: Path, metric: str, max_epochs: int, seed: int, data: str,
                  threads: int = 1) -> dict:
    """Write the three result files; returns the best trial's record."""
    out.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(results, metric, max_epochs)
    table = pd.DataFrame([_flat(row) for row in rows])
    table.to_csv(out / "trials.csv", index=False)
    _parquet_ready(table).to_parquet(out / "trials.parquet", index=False)
    scored = [r for r in rows if r["best_epoch"] is not None]
    if not scored:
        raise EcgTuneError(f"{out}: no trial reported {metric}; see trials.csv and the experiment/ logs")
    winner = max(scored, key=lambda r: r["peak_metrics"][metric])
    best = {
        "config": trial_config(winner["config"], max_epochs, seed),
        "metrics": winner["peak_metrics"],
        "epoch": winner["best_epoch"],
        "trial_id": winner["trial_id"],
        "metric": metric,
        "data": data,
        # Ray runs a trial with OMP_NUM_THREADS = its CPUs; float sums depend on the thread count,
        # so `ecg-tune train` uses the same count to repeat the trial bit for bit on a CPU.
        "threads": threads,
    }
    (out / "best_config.json").write_text(json.dumps(best, indent=2, default=_plain))
    return best


def _flat(row: dict) -> dict:
    flat = {"trial_id": row["trial_id"], "status": row["status"], "epochs": row["epochs"],
            "best_epoch": row["best_epoch"]}
    flat.update({f"config/{k}": _plain(v) for k, v in row["config"].items()})
    flat.update({f"final/{k}": v for k, v in row["final"].items()})
    flat.update({f"best/{k}": v for k, v in row["best"].items()})
    return flat


def _parquet_ready(table: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix numbers and text (svm_gamma: 0.01 or "scale") as text, as Parquet needs."""
    table = table.copy()
    for column in table.columns:
        values = table[column].dropna()
        if table[column].dtype == object and values.map(type).nunique() > 1:
            table[column] = table[column].map(lambda v: v if pd.isna(v) else str(v))
    return table


def _plain(value):
    """numpy scalars (from samplers) as plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    return value
