"""A run folder: the files a search leaves and the refit, the report and the benchmarks read.

    <out>/best_config.json     the winning trial (`BestConfig`)
    <out>/trials.csv, .parquet one row per trial (`TrialRecord.flat`); whole numbers stay whole
    <out>/split.csv            the record-level split every later stage uses
    <out>/experiment/          Ray Tune's experiment (per trial: params.json, result.json, ...), unless
                               --storage put it elsewhere: then <out>/storage.json says where (storage.py)
    <out>/.search.lock         held while a search or refit writes to the folder
    <out>/space.json           the search space as adapted to the data (`AdaptedSpace.to_record`)
    <out>/report.json          the refit's test report (content: reporting/evaluation.py); model/ the bundle
    <out>/report.html          the search and test report on one page (ecg_tune/reporting/page.py)
    <out>/<picture>.png        the refit's pictures (`PICTURES`, drawn by ecg_tune/reporting/pictures.py)
    <out>/test_predictions.csv the refit's per-record test predictions
    <out>/mlflow.json          --mlflow: the tracking URI and the search's parent run (`TrackingRecord`);
                               with the default URI, <out>/mlflow.db and <out>/mlartifacts/ hold the runs

This module is the only one that knows these names and formats: everything else asks a
`RunFolder` for typed records.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ecg_tune.data import Dataset
from ecg_tune.data.split import save_split
from ecg_tune.errors import EcgTuneError, validation_message
from ecg_tune.storage import ExperimentStorage
from ecg_tune.training.metrics import SPREAD_SUFFIX
from ecg_tune.training.reported import TRAINING_ITERATION

TrialStatus = Literal["completed", "stopped", "errored"]
PictureName = Literal["confusion_matrix", "training_curves", "search_overview"]
PICTURES: tuple[PictureName, ...] = ("confusion_matrix", "training_curves", "search_overview")
_HELD: set[Path] = set()  # run folders this process holds the lock of (a search's refit re-enters it)


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

    def flat(self) -> dict[str, Any]:
        row: dict[str, Any] = {"trial_id": self.trial_id, "status": self.status, "epochs": self.epochs,
                               "best_epoch": self.best_epoch}
        row.update({f"{_CONFIG}{k}": _plain(v) for k, v in self.config.items()})
        row.update({f"{_FINAL}{k}": v for k, v in self.final.items()})
        row.update({f"{_BEST}{k}": v for k, v in self.best.items()})
        return row


# trials.csv's column groups: `TrialRecord.flat` writes them, `TrialTable` reads them; no other
# module knows these prefixes.
_CONFIG, _FINAL, _BEST = "config/", "final/", "best/"
_INFO = ("trial_id", "status", "epochs", "best_epoch")


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


class RunFolder:
    """The files of one search's output folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # paths -----------------------------------------------------------------------------------

    @property
    def best_config_path(self) -> Path:
        return self.path / "best_config.json"

    @property
    def split_path(self) -> Path:
        return self.path / "split.csv"

    @property
    def storage_record_path(self) -> Path:
        return self.path / "storage.json"

    def storage(self) -> ExperimentStorage:
        """Where Tune's experiment of this run is: as recorded by the search, else `<out>/experiment`."""
        path = self.storage_record_path
        if path.is_file():
            return ExperimentStorage.from_json(path.read_text(), where=str(path))
        return ExperimentStorage(str(self.path))

    def write_storage(self, storage: ExperimentStorage) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.storage_record_path.write_text(storage.to_json())

    @property
    def mlflow_db_path(self) -> Path:
        """The SQLite store of `--mlflow` without a URI."""
        return self.path / "mlflow.db"

    @property
    def tracking_record_path(self) -> Path:
        return self.path / "mlflow.json"

    def write_tracking(self, record: TrackingRecord) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.tracking_record_path.write_text(record.model_dump_json(indent=2))

    def tracking(self) -> TrackingRecord | None:
        """The search's MLflow parent run, or None when it was not tracked."""
        path = self.tracking_record_path
        if not path.is_file():
            return None
        try:
            return TrackingRecord.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise EcgTuneError(f"{path}: {validation_message(exc)}") from None

    @property
    def report_path(self) -> Path:
        return self.path / "report.json"

    def picture_path(self, name: PictureName) -> Path:
        if name not in PICTURES:
            raise ValueError(f"{name!r} is not one of the run folder's pictures {PICTURES}")
        return self.path / f"{name}.png"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for one writer: a second search (or refit) on it is refused at once, with
        who holds it, instead of both writing the same files. The OS drops the lock when the holder
        dies, so a killed search never leaves the folder locked."""
        import fcntl

        folder = self.path.resolve()
        if folder in _HELD:
            yield
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ".search.lock"
        handle = open(path, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise EcgTuneError(f"{folder}: in use by {holder}; wait for it to finish or give another --out") \
                    from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            _HELD.add(folder)
            try:
                yield
            finally:
                _HELD.discard(folder)
        finally:
            handle.close()

    # best config -----------------------------------------------------------------------------

    def write_best(self, best: BestConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.best_config_path.write_text(json.dumps(asdict(best), indent=2, default=_plain))

    def best(self) -> BestConfig:
        path = self.best_config_path
        if not path.is_file():
            raise EcgTuneError(f"{self.path}: no best_config.json (is this a finished search folder?)")
        return read_best_config(path)

    # trials ----------------------------------------------------------------------------------

    def write_trials(self, records: list[TrialRecord]) -> pd.DataFrame:
        """trials.csv and trials.parquet; returns the table."""
        self.path.mkdir(parents=True, exist_ok=True)
        rows = [r.flat() for r in records]
        table = _whole_numbers_stay_whole(pd.DataFrame(rows), rows)
        table.to_csv(self.path / "trials.csv", index=False)
        _parquet_ready(table).to_parquet(self.path / "trials.parquet", index=False)
        return table

    def trials(self) -> pd.DataFrame:
        """trials.csv as written (an empty table when the search wrote none); `trial_table` gives
        its parts typed."""
        path = self.path / "trials.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    def trial_table(self) -> TrialTable:
        """trials.csv as a `TrialTable` (empty parts when the search wrote none)."""
        return TrialTable.from_frame(self.trials())

    # the adapted space -----------------------------------------------------------------------

    @property
    def space_path(self) -> Path:
        return self.path / "space.json"

    def write_space(self, record: dict[str, Any]) -> None:
        """space.json: the search space as adapted to the data (`AdaptedSpace.to_record()`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.space_path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")

    def space_record(self) -> dict[str, Any] | None:
        """space.json's content (`AdaptedSpace.from_record` types it); None for runs written before
        it existed."""
        path = self.space_path
        if not path.is_file():
            return None
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise EcgTuneError(f"{path}: not a readable space record ({exc})") from None
        if not isinstance(content, dict):
            raise EcgTuneError(f"{path}: not a space record (a JSON {type(content).__name__}, not an object)")
        return content

    # Tune's per-trial results ----------------------------------------------------------------

    def histories(self, trial_id: str = "") -> dict[str, pd.DataFrame]:
        """Every trial's per-epoch results (its result.json, read from the run's storage), by trial id
        (`trial_id`: that trial's only). One row per epoch: a trial that went back to an older
        checkpoint reported some epochs twice, and the last report of an epoch is the one its
        later epochs (and the refit's learning-rate replay) built on."""
        histories = {}
        storage = self.storage()
        for folder, content in storage.trial_files("result.json", folder_contains=trial_id):
            try:
                rows = _json_lines(content)
            except ValueError as exc:
                raise EcgTuneError(f"{storage.describe()}/{folder}/result.json: not JSON lines ({exc})") from None
            if rows:
                frame = pd.DataFrame(rows)
                if TRAINING_ITERATION in frame:
                    frame = frame.drop_duplicates(TRAINING_ITERATION, keep="last").reset_index(drop=True)
                histories[str(rows[0].get("trial_id", folder))] = frame
        return histories

    def history(self, trial_id: str) -> pd.DataFrame | None:
        """One trial's per-epoch results, or None when it reported nothing."""
        return self.histories(trial_id).get(trial_id)

    # split -----------------------------------------------------------------------------------

    def write_split(self, dataset: Dataset) -> Path:
        """split.csv: the record-level split every later stage of this run uses."""
        return save_split(dataset.records, dataset.split, self.split_path)

    # the refit's outputs ---------------------------------------------------------------------

    def write_report(self, test: dict[str, Any], validation: dict[str, float], config: dict[str, Any],
                     epochs: int) -> dict[str, Any]:
        """report.json (its content is reporting/evaluation.py's, strict JSON); returns what was
        written, which equals what `report` reads back."""
        # imported here: evaluation.py imports sklearn, which reading a run folder does not need
        from ecg_tune.reporting.evaluation import report_content

        report = report_content(test, validation, config, epochs)
        _write_atomic(self.report_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
        return report

    def report(self) -> dict[str, Any]:
        """The refit's report.json."""
        if not self.report_path.is_file():
            raise EcgTuneError(f"{self.path}: no report.json; refit the search first "
                               f"(ecg-tune refit --run {self.path})")
        return dict(json.loads(self.report_path.read_text()))

    def write_predictions(self, predictions: pd.DataFrame) -> Path:
        """test_predictions.csv: one row per test record (the refit's columns: record, true,
        predicted, p_<class>...)."""
        path = self.path / "test_predictions.csv"
        _write_atomic(path, predictions.to_csv(index=False))
        return path

    def write_picture(self, name: PictureName, png: bytes) -> Path:
        """One of the refit's pictures (`PICTURES`), as PNG bytes; returns its path."""
        path = self.picture_path(name)
        _write_atomic(path, png)
        return path

    def write_html_report(self, page: str) -> Path:
        """report.html; returns its path."""
        path = self.path / "report.html"
        _write_atomic(path, page)
        return path


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


def _write_atomic(path: Path, content: str | bytes) -> None:
    """Written beside and renamed into place: an interrupted run never leaves half a file, and a
    reader (a browser on report.html) never sees one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    if isinstance(content, bytes):
        partial.write_bytes(content)
    else:
        partial.write_text(content, encoding="utf-8")
    os.replace(partial, path)


def _json_lines(content: bytes) -> list[dict[str, Any]]:
    lines = [line for line in content.decode("utf-8", errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if number == len(lines) - 1:
                break  # a line cut short by a killed process: the epochs before it stand
            raise
    return rows


def _whole_numbers_stay_whole(table: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Columns of whole numbers with gaps (a parameter absent from some trials) as nullable
    integers, not floats: `levels 8`, not `8.0`."""
    table = table.copy()
    for column in table.columns:
        given = [row[column] for row in rows if row.get(column) is not None]
        if given and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in given):
            table[column] = table[column].astype("Int64")
    return table


def _parquet_ready(table: pd.DataFrame) -> pd.DataFrame:
    """Columns that mix numbers and text (svm_gamma: 0.01 or "scale") as text, as Parquet needs."""
    table = table.copy()
    for column in table.columns:
        values = table[column].dropna()
        if table[column].dtype == object and values.map(type).nunique() > 1:
            table[column] = table[column].map(lambda v: v if pd.isna(v) else str(v))
    return table


def _plain(value: Any) -> Any:
    """numpy scalars (from samplers) as plain Python values."""
    if isinstance(value, np.generic):
        return value.item()
    return value
