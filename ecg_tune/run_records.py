"""The typed records of a run folder's files (ecg_tune/runs.py reads and writes them): the best
config, one record per trial and trials.csv's parts, the tracking record, a trial's validation
predictions and the chosen ensemble; with the rules that turn them into tables and back.

Other modules take these types from ecg_tune.runs, which re-exports them beside `RunFolder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ecg_tune.errors import EcgTuneError, validation_message
from ecg_tune.training.metrics import SPREAD_SUFFIX

TrialStatus = Literal["completed", "stopped", "errored"]


@dataclass(frozen=True)
class BestConfig:
    """The winning trial of a search: its config, its metrics at its best epoch, where it came from."""

    config: dict[str, Any]  # the sampled values plus the search's epochs and seed
    # every metric at the epoch where `metric` peaked; under cross-validation the fold means,
    # with each validation metric's spread over the folds as `<metric>_std`
    metrics: dict[str, float]
    epoch: int  # that epoch (under cross-validation: where the fold mean peaked)
    trial_id: str
    metric: str  # the ranking metric
    data: str  # the --data source
    # Ray runs a trial with OMP_NUM_THREADS = its CPUs; float sums depend on the thread count,
    # so `ecg-tune train` uses the same count to repeat the trial bit for bit on a CPU.
    threads: int = 1
    cv: int = 1  # cross-validation folds each trial was scored on (1: the split's val part)
    # data.split.split_digest of the split the search used (None: written before it was recorded);
    # the refit and `train --config` refuse a split.csv that no longer has it.
    split_digest: str | None = None

    @property
    def score(self) -> float:
        return self.metrics[self.metric]

    @property
    def spread(self) -> float | None:
        """The score's standard deviation over the folds (None without cross-validation)."""
        return self.metrics.get(self.metric + SPREAD_SUFFIX) if self.cv > 1 else None


@dataclass
class TrialRecord:
    """One trial's summary: status, epochs, sampled config, final and best metrics."""

    trial_id: str
    status: TrialStatus
    epochs: int
    config: dict[str, Any]
    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)  # per metric, its best over the epochs
    best_epoch: int | None = None  # where the ranking metric peaked
    peak_metrics: dict[str, float] = field(default_factory=dict)  # every metric at best_epoch
    error: str | None = None  # an errored trial's one-line reason (e.g. CUDA out of memory on its share)

    def flat(self) -> dict[str, Any]:
        row: dict[str, Any] = {"trial_id": self.trial_id, "status": self.status, "epochs": self.epochs,
                               "best_epoch": self.best_epoch, "error": self.error}
        row.update({f"{_CONFIG}{k}": plain(v) for k, v in self.config.items()})
        row.update({f"{_FINAL}{k}": v for k, v in self.final.items()})
        row.update({f"{_BEST}{k}": v for k, v in self.best.items()})
        return row


# trials.csv's column groups: `TrialRecord.flat` writes them, `TrialTable` reads them; no other
# module knows these prefixes.
_CONFIG, _FINAL, _BEST = "config/", "final/", "best/"
_INFO = ("trial_id", "status", "epochs", "best_epoch", "error")


@dataclass(frozen=True)
class TrialTable:
    """trials.csv as typed parts, one row per trial in the table's order (index: trial id).

    `config`: one column per config key (NaN where a trial did not set a conditional key);
    `final` / `best`: one column per reported key, at the trial's last epoch / its best value over
    the epochs (spreads at the epoch where their metric was best); `info`: status, epochs,
    best_epoch.
    """

    info: pd.DataFrame
    config: pd.DataFrame
    final: pd.DataFrame
    best: pd.DataFrame

    @classmethod
    def from_frame(cls, table: pd.DataFrame) -> TrialTable:
        """The parts of a table shaped like trials.csv (`TrialRecord.flat` rows)."""
        if "trial_id" in table:
            table = table.set_index(table["trial_id"].astype(str), drop=False)
        table.index.name = "trial_id"

        def part(prefix: str) -> pd.DataFrame:
            columns = [c for c in table.columns if str(c).startswith(prefix)]
            return table[columns].rename(columns=lambda c: str(c)[len(prefix):])

        info = table[[c for c in _INFO if c in table.columns]]
        return cls(info=info, config=part(_CONFIG), final=part(_FINAL), best=part(_BEST))

    def __len__(self) -> int:
        return len(self.info)

    @property
    def empty(self) -> bool:
        return len(self.info) == 0

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in self.info.index]


class TrackingRecord(BaseModel):
    """mlflow.json: where a `--mlflow` search logs (ecg_tune/tracking.py), so that a later refit and
    `--resume` log to the same parent run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_uri: StrictStr
    parent_run_id: StrictStr
    experiment_id: StrictStr


class _BestConfigFile(BaseModel):
    """best_config.json as `write_best` writes it (older files lack metric, threads, cv and
    split_digest); a damaged or hand-edited file fails here with the key and the problem."""

    config: dict[str, Any]
    metrics: dict[str, float]
    epoch: StrictInt = Field(ge=1)
    trial_id: StrictStr
    metric: StrictStr = "val_macro_f1"
    data: StrictStr
    threads: StrictInt | None = Field(None, ge=1)
    cv: StrictInt | None = Field(None, ge=1)
    split_digest: StrictStr | None = None


def read_best_config(path: Path) -> BestConfig:
    """A best_config.json, wherever it is (`ecg-tune train --config` takes one), checked: a
    damaged or hand-edited file is a one-line error naming the file and the key."""
    from ecg_tune.config import make_config

    try:
        content = json.loads(path.read_text())
    except OSError as exc:
        raise EcgTuneError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise EcgTuneError(f"{path}: not a search's best_config.json ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise EcgTuneError(f"{path}: not a search's best_config.json (a JSON {type(content).__name__}, not an object)")
    try:
        fields = _BestConfigFile.model_validate(content)
    except ValidationError as exc:
        raise EcgTuneError(f"{path}: {validation_message(exc)}") from None
    if "metric" in content and fields.metric not in fields.metrics:
        raise EcgTuneError(f"{path}: metric {fields.metric!r} is not among its metrics "
                           f"({', '.join(sorted(fields.metrics))})")
    make_config(fields.config, where=str(path))  # every reader gets a config that validates
    return BestConfig(config=fields.config, metrics=fields.metrics, epoch=fields.epoch, trial_id=fields.trial_id,
                      metric=fields.metric, data=fields.data, threads=fields.threads or 1, cv=fields.cv or 1,
                      split_digest=fields.split_digest)


def is_best_config(path: str | Path) -> bool:
    """Whether `path` is a search's best_config.json (rather than a plain config file)."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        content = json.loads(path.read_text())
    except ValueError:
        return False
    return isinstance(content, dict) and isinstance(content.get("config"), dict) and "trial_id" in content


def whole_numbers_stay_whole(table: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Columns of whole numbers with gaps (a parameter absent from some trials) as nullable
    integers, not floats: `levels 8`, not `8.0`."""
    table = table.copy()
    for column in table.columns:
        given = [row[column] for row in rows if row.get(column) is not None]
        if given and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in given):
            table[column] = table[column].astype("Int64")
    return table


def parquet_ready(table: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix numbers and text (svm_gamma: 0.01 or "scale") as text, as Parquet needs."""
    table = table.copy()
    for column in table.columns:
        values = table[column].dropna()
        if table[column].dtype == object and values.map(type).nunique() > 1:
            table[column] = table[column].map(lambda v: v if pd.isna(v) else str(v))
    return table


def plain(value: Any) -> Any:
    """numpy scalars (from samplers) as plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class TrialPredictions:
    """A trial's class probabilities for the records it was validated on, at the epoch the export
    ranks it by (under cross-validation its fold models' out-of-fold probabilities: every train +
    val record once). What ensemble selection combines."""

    trial_id: str
    epoch: int
    record_ids: tuple[str, ...]
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (records, classes), float32, each row sums to 1

    def __post_init__(self) -> None:
        shape = (len(self.record_ids), len(self.classes))
        if self.probabilities.shape != shape:
            raise ValueError(f"trial {self.trial_id}: probabilities of shape {self.probabilities.shape}, "
                             f"expected {shape} (records x classes)")

    def to_frame(self) -> pd.DataFrame:
        """The file's table: `record`, `epoch`, then one `p_<class>` column per class, in order."""
        frame = pd.DataFrame({"record": list(self.record_ids), "epoch": self.epoch})
        for k, name in enumerate(self.classes):
            frame[f"{_PROBABILITY}{name}"] = self.probabilities[:, k].astype(np.float32)
        return frame

    @classmethod
    def from_frame(cls, trial_id: str, frame: pd.DataFrame, where: str) -> TrialPredictions:
        columns = [c for c in frame.columns if str(c).startswith(_PROBABILITY)]
        if "record" not in frame or "epoch" not in frame or not columns or frame.empty:
            raise EcgTuneError(f"{where}: not a trial's predictions (expected record, epoch and p_<class> columns)")
        return cls(trial_id=trial_id, epoch=int(frame["epoch"].iloc[0]),
                   record_ids=tuple(str(r) for r in frame["record"]),
                   classes=tuple(str(c)[len(_PROBABILITY):] for c in columns),
                   probabilities=frame[columns].to_numpy(np.float32))


_PROBABILITY = "p_"  # a probability column's prefix (the same as predict's and test_predictions.csv's)


class EnsembleMember(BaseModel):
    """One trial in the chosen ensemble and its weight (the share of the greedy picks that chose it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trial_id: StrictStr
    weight: float = Field(gt=0, le=1)


class EnsembleRecord(BaseModel):
    """ensemble.json: the team chosen after a search (ecg_tune/search/ensemble.py); one member with
    weight 1 when the single best trial was kept."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    members: tuple[EnsembleMember, ...] = Field(min_length=1)
    metric: StrictStr  # what the selection maximised (the search's ranking metric)
    # How the choice was made and what it was judged on, in words and figures (selection details:
    # e.g. held-out estimates of the ensemble's and the single best's metric, the candidates).
    rule: StrictStr = ""
    figures: dict[str, float] = Field(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        total = sum(m.weight for m in self.members)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"members: the weights sum to {total:g}, not 1")
        ids = [m.trial_id for m in self.members]
        if len(set(ids)) != len(ids):
            raise ValueError("members: a trial is listed twice")
