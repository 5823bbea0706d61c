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
    <out>/predictions/<trial>.parquet  each trial's validation probabilities at its ranked epoch
                               (`TrialPredictions`; under --cv out-of-fold, every train + val record)
    <out>/ensemble.json        the team chosen from the trials (`EnsembleRecord`)
    <out>/pareto.csv           the non-dominated trials over the search's objectives, with their figures
                               and key config values (rows: ecg_tune/reporting/pareto.py's `csv_rows`)
    <out>/mlflow.json          --mlflow: the tracking URI and the search's parent run (`TrackingRecord`);
                               with the default URI, <out>/mlflow.db and <out>/mlartifacts/ hold the runs

This module and the records it reads and writes (ecg_tune/run_records.py) are the only ones that
know these names and formats: everything else asks a `RunFolder` for typed records.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd
from pydantic import BaseModel, ValidationError

from ecg_tune.data import Dataset
from ecg_tune.data.split import save_split
from ecg_tune.errors import EcgTuneError, validation_message
from ecg_tune.run_records import (
    BestConfig,
    EnsembleMember,
    EnsembleRecord,
    TrackingRecord,
    TrialPredictions,
    TrialRecord,
    TrialStatus,
    TrialTable,
    is_best_config,
    parquet_ready,
    plain,
    read_best_config,
    whole_numbers_stay_whole,
)
from ecg_tune.storage import ExperimentStorage
from ecg_tune.training.reported import TRAINING_ITERATION

# The records live in run_records.py; importers take them from here, beside the folder.
__all__ = ["PICTURES", "BestConfig", "EnsembleMember", "EnsembleRecord", "PictureName", "RunFolder",
           "TrackingRecord", "TrialPredictions", "TrialRecord", "TrialStatus", "TrialTable", "is_best_config",
           "read_best_config"]

PictureName = Literal["confusion_matrix", "training_curves", "search_overview"]
PICTURES: tuple[PictureName, ...] = ("confusion_matrix", "training_curves", "search_overview")
_HELD: set[Path] = set()  # run folders this process holds the lock of (a search's refit re-enters it)


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
        return _optional_record(self.tracking_record_path, TrackingRecord)

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
        self.best_config_path.write_text(json.dumps(asdict(best), indent=2, default=plain))

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
        table = whole_numbers_stay_whole(pd.DataFrame(rows), rows)
        table.to_csv(self.path / "trials.csv", index=False)
        parquet_ready(table).to_parquet(self.path / "trials.parquet", index=False)
        return table

    def trials(self) -> pd.DataFrame:
        """trials.csv as written (an empty table when the search wrote none); `trial_table` gives
        its parts typed."""
        path = self.path / "trials.csv"
        # round_trip: pandas' default float parser can miss the written value by an ulp, and a
        # member's config read back from here must be the config its trial ran.
        return pd.read_csv(path, float_precision="round_trip") if path.is_file() else pd.DataFrame()

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
        self.space_path.write_text(json.dumps(record, indent=2, default=plain) + "\n")

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

    # the trials' validation predictions and the chosen ensemble ---------------------------------

    @property
    def predictions_dir(self) -> Path:
        return self.path / "predictions"

    def write_trial_predictions(self, predictions: TrialPredictions) -> Path:
        """predictions/<trial>.parquet (replaces the trial's earlier file)."""
        path = self.predictions_dir / f"{predictions.trial_id}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        predictions.to_frame().to_parquet(partial, index=False)
        os.replace(partial, path)
        return path

    def trial_predictions(self) -> dict[str, TrialPredictions]:
        """Every trial's saved validation predictions, by trial id (empty for runs without them)."""
        found = {}
        for path in sorted(self.predictions_dir.glob("*.parquet")):
            try:
                frame = pd.read_parquet(path)
            except (OSError, ValueError) as exc:
                raise EcgTuneError(f"{path}: not readable as a trial's predictions ({exc})") from None
            found[path.stem] = TrialPredictions.from_frame(path.stem, frame, where=str(path))
        return found

    @property
    def ensemble_path(self) -> Path:
        return self.path / "ensemble.json"

    def write_ensemble(self, record: EnsembleRecord) -> None:
        _write_atomic(self.ensemble_path, record.model_dump_json(indent=2) + "\n")

    def ensemble(self) -> EnsembleRecord | None:
        """The chosen ensemble, or None when the search chose none (older runs, --ensemble 1)."""
        return _optional_record(self.ensemble_path, EnsembleRecord)

    # the Pareto front -------------------------------------------------------------------------

    @property
    def pareto_path(self) -> Path:
        return self.path / "pareto.csv"

    def write_pareto(self, rows: pd.DataFrame) -> Path:
        """pareto.csv: the front's trials, one row each (a `trial_id` column, then their figures)."""
        if "trial_id" not in rows.columns:
            raise ValueError("pareto.csv's rows need a trial_id column")
        _write_atomic(self.pareto_path, rows.to_csv(index=False))
        return self.pareto_path

    def pareto(self) -> pd.DataFrame | None:
        """pareto.csv as written (trial ids as text), or None for runs written before it existed."""
        path = self.pareto_path
        if not path.is_file():
            return None
        try:
            rows = pd.read_csv(path, dtype={"trial_id": str}, float_precision="round_trip")
        except (OSError, ValueError) as exc:
            raise EcgTuneError(f"{path}: not readable as a Pareto table ({exc})") from None
        if "trial_id" not in rows.columns:
            raise EcgTuneError(f"{path}: not a Pareto table (no trial_id column)")
        return rows

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
                     epochs: int, *, ensemble: dict[str, Any] | None = None,
                     refit_seconds: float | None = None, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
        """report.json (its content is reporting/evaluation.py's, strict JSON); returns what was
        written, which equals what `report` reads back."""
        # imported here: evaluation.py imports sklearn, which reading a run folder does not need
        from ecg_tune.reporting.evaluation import report_content

        report = report_content(test, validation, config, epochs, ensemble=ensemble, refit_seconds=refit_seconds,
                                chosen=chosen)
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


Record = TypeVar("Record", bound=BaseModel)


def _optional_record(path: Path, kind: type[Record]) -> Record | None:
    """A JSON record of the folder, checked (one line naming the file and the key when damaged);
    None when the file is absent."""
    if not path.is_file():
        return None
    try:
        return kind.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise EcgTuneError(f"{path}: {validation_message(exc)}") from None


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


