"""Readers: one per kind of ECG source, each turning files into `Records`.

Kinds, chosen from the source string:
- `synthetic` / `synthetic:N`: the embedded generator (data/synthetic.py);
- a PhysioNet/WFDB folder: `.hea` headers with `.mat` or `.dat` signals, labels in `REFERENCE.csv`
  (optional: without it the records are unlabelled, for prediction);
- the seed notebook's folder: `train_df.pkl` (+ `val_df.pkl`) with `signal` and `label` columns;
- one table file: `.pkl` / `.pickle` / `.parquet` with a `signal` column (optional `label`,
  `record`, `fs`, `group`, `split`);
- fixed-length beat tables: UCR text files (`.txt` / `.tsv`, label in the first column) and wide
  CSV files (label in the last column); a `*_TRAIN` / `*_TEST` pair keeps its split.

`source_kind` tells the kind from the source string; `SOURCES` is the registry of readers, one
per kind, which `read_source` looks the kind up in (adding a kind: one reader registered under
the name `source_kind` returns for it).

Readers only read. Checks that apply to every source (empty or non-finite signals) and caching
live in `ecg_tune.data` (load); splitting in data/split.py.
"""

from __future__ import annotations

import csv
import os
import re
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ecg_tune.data.records import Records
from ecg_tune.errors import DataError
from ecg_tune.registry import Registry

LabelColumn = Literal["first", "last", "none"]
# A reader of one kind of source: (the source string, label_column, progress) -> Records.
SourceReader = Callable[[str, "LabelColumn | None", bool], Records]
SOURCES: Registry[SourceReader] = Registry("data source")

# The notebook stored CinC 2017 labels as integers in this order (see its data preparation).
NOTEBOOK_CLASSES = ["N", "A", "O", "~"]
PICKLE_SUFFIXES = {".pkl", ".pickle"}
UCR_SUFFIXES = {".txt", ".tsv"}
TABLE_SUFFIXES = PICKLE_SUFFIXES | {".parquet", ".csv"} | UCR_SUFFIXES
_SPLIT_NAME = re.compile(r"_(TRAIN|TEST)(?=\.[^.]+$)", re.IGNORECASE)
# Words that mark the first row of a label file as a header rather than a record.
_HEADER_WORDS = {"record", "records", "record_id", "data_source", "id", "name", "filename",
                 "file", "class", "label", "labels", "rhythm", "target", "y"}
SYNTHETIC_DEFAULT_RECORDS = 1000


def source_kind(source: str) -> str:
    """The kind of a source string, the name of its reader in `SOURCES`: synthetic, notebook,
    physionet, physionet_record, ucr_folder or table."""
    if source == "synthetic" or source.startswith("synthetic:"):
        return "synthetic"
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{source}: no such file or folder")
    if path.is_dir():
        if (path / "train_df.pkl").is_file():
            return "notebook"
        if any(path.glob("*.hea")):
            return "physionet"
        if _ucr_pair_in_folder(path):
            return "ucr_folder"
        raise DataError(
            f"{source}: no ECG records found (expected WFDB .hea files, train_df.pkl, "
            "or a *_TRAIN/*_TEST table pair)"
        )
    if path.suffix.lower() == ".hea":
        return "physionet_record"
    if path.suffix.lower() in TABLE_SUFFIXES:
        return "table"
    raise DataError(
        f"{source}: unknown format {path.suffix or '(no extension)'!r}; expected a folder, "
        f"'synthetic', or a file ending in {', '.join(sorted(TABLE_SUFFIXES | {'.hea'}))}"
    )


def read_source(source: str, label_column: LabelColumn | None = None, progress: bool = True) -> Records:
    """Read any source string into Records (uncached; see ecg_tune.data.load)."""
    return SOURCES.get(source_kind(source))(source, label_column, progress)


def _path(source: str) -> Path:
    return Path(source).expanduser().resolve()


# The readers of the kinds, by the names source_kind gives them.

@SOURCES.register("synthetic")
def _synthetic(source: str, label_column: LabelColumn | None, progress: bool) -> Records:
    return read_synthetic(source)


@SOURCES.register("notebook")
def _notebook(source: str, label_column: LabelColumn | None, progress: bool) -> Records:
    return read_notebook_folder(_path(source))


@SOURCES.register("physionet")
def _physionet(source: str, label_column: LabelColumn | None, progress: bool) -> Records:
    return read_physionet_folder(_path(source), progress=progress)


@SOURCES.register("physionet_record")
def _physionet_record(source: str, label_column: LabelColumn | None, progress: bool) -> Records:
    path = _path(source)
    return read_wfdb_records([path.with_suffix("")], source=str(path), progress=progress)


@SOURCES.register("ucr_folder")
def _ucr_folder(source: str, label_column: LabelColumn | None, progress: bool) -> Records:
    return read_table(_ucr_pair_in_folder(_path(source))[0], label_column)


@SOURCES.register("table")
def _table(source: str, label_column: LabelColumn | None, progress: bool) -> Records:
    return read_table(_path(source), label_column)


# ---------------------------------------------------------------------------------- synthetic


def read_synthetic(source: str) -> Records:
    from ecg_tune.data.synthetic import generate

    _, _, count = source.partition(":")
    if not count:
        return generate(SYNTHETIC_DEFAULT_RECORDS)
    try:
        n_records = int(count)
    except ValueError:
        raise DataError(f"{source}: expected synthetic:N with N a whole number of records") from None
    return generate(n_records)


# ---------------------------------------------------------------------------------- PhysioNet


def read_physionet_folder(folder: Path, progress: bool = True) -> Records:
    """A WFDB folder; labels from REFERENCE.csv when there is one."""
    stems = sorted(p.stem for p in folder.glob("*.hea"))
    reference = folder / "REFERENCE.csv"
    if not reference.is_file():
        return read_wfdb_records([folder / s for s in stems], source=str(folder), progress=progress)

    rows = read_label_file(reference)
    known = set(stems)
    missing = [rec for rec, _ in rows if rec not in known]
    if missing:
        raise DataError(
            f"{reference}: names {len(missing)} record(s) with no .hea file in {folder}: "
            f"{some_of(missing)}"
        )
    unlabelled = len(known) - len({rec for rec, _ in rows})
    if unlabelled > 0:
        warnings.warn(f"{folder}: {unlabelled} record(s) have no label in REFERENCE.csv and are left out",
                      stacklevel=1)
    records = read_wfdb_records([folder / rec for rec, _ in rows], source=str(folder), progress=progress)
    classes, labels = encode_labels([label for _, label in rows], where=str(reference))
    records.labels = labels
    records.classes = classes
    return records


def read_label_file(path: Path) -> list[tuple[str, str]]:
    """(record, label) rows of a REFERENCE.csv: with or without a header, CRLF or LF ends."""
    try:
        with open(path, newline="") as handle:
            rows = [[cell.strip() for cell in row] for row in csv.reader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read label file ({exc})") from None
    rows = [row for row in rows if any(row)]
    if rows and (rows[0][0].lower() in _HEADER_WORDS or (len(rows[0]) > 1 and rows[0][1].lower() in _HEADER_WORDS)):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: label file has no rows")
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0] or not row[1]:
            raise DataError(f"{path}: row {number} is {','.join(row)!r}; expected 'record,label'")
    records = [row[0] for row in rows]
    if len(set(records)) != len(records):
        duplicates = sorted({r for r in records if records.count(r) > 1})
        raise DataError(f"{path}: records listed more than once: {some_of(duplicates)}")
    return [(row[0], row[1]) for row in rows]


def read_wfdb_records(paths: list[Path], source: str, progress: bool = True) -> Records:
    """WFDB records (header path without extension); gain, units and fs come from the headers."""
    if not paths:
        raise DataError(f"{source}: no WFDB records to read")
    results = _map_with_progress(_read_one_wfdb, [str(p) for p in paths], progress,
                                 f"reading {len(paths)} WFDB records")
    rates = {fs for _, fs, _ in results}
    if len(rates) > 1:
        by_rate = {fs: str(p.name) for p, (_, fs, _) in zip(paths, results, strict=False)}
        raise DataError(
            f"{source}: records have different sampling rates "
            f"({', '.join(f'{r:g} Hz in {n}' for r, n in by_rate.items())})"
        )
    multi = [p.name for p, (_, _, n_leads) in zip(paths, results, strict=False) if n_leads > 1]
    if multi:
        warnings.warn(f"{source}: {len(multi)} record(s) have several leads; the first lead is used ({some_of(multi)})",
                      stacklevel=1)
    return Records(
        signals=[signal for signal, _, _ in results],
        labels=None,
        classes=[],
        record_ids=[p.name for p in paths],
        fs=float(rates.pop()),
        source=source,
    )


_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}


def _read_one_wfdb(path: str) -> tuple[np.ndarray, float, int]:
    import wfdb

    try:
        record = wfdb.rdrecord(path)
    except Exception as exc:  # wfdb raises many types for unreadable files
        raise DataError(f"{path}.hea: cannot read WFDB record ({type(exc).__name__}: {exc})") from None
    signal = record.p_signal
    if signal is None or signal.size == 0:
        raise DataError(f"{path}.hea: the record has no samples")
    unit = (record.units or ["mV"])[0] or "mV"
    factor = _UNIT_TO_MV.get(unit.strip().lower(), 1.0)
    return (signal[:, 0] * factor).astype(np.float32), float(record.fs), signal.shape[1]


def _map_with_progress(fn: Callable, items: list, progress: bool, what: str) -> list:
    """fn over items, in worker processes for long lists, with a progress bar on stderr."""
    from tqdm.auto import tqdm

    show = progress and len(items) >= 200
    # In a log file (no terminal) a bar redrawn many times a second is noise: update rarely.
    interval = 0.5 if sys.stderr.isatty() else 10.0
    workers = min(os.cpu_count() or 1, 8)
    if len(items) < 200 or workers < 2:
        return [fn(item) for item in tqdm(items, desc=what, disable=not show, leave=False,
                                              mininterval=interval)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=64), total=len(items), desc=what,
                         disable=not show, leave=False, mininterval=interval))


# ---------------------------------------------------------------------------------- notebook


def read_notebook_folder(folder: Path) -> Records:
    """The seed notebook's train_df.pkl (+ val_df.pkl): its predefined split is kept."""
    parts = []
    for split, name in (("train", "train_df.pkl"), ("val", "val_df.pkl")):
        file = folder / name
        if file.is_file():
            frame = _read_frame(file)
            parts.append((split, file, frame))
    records = [_records_from_frame(frame, file, split=split, id_prefix=split) for split, file, frame in parts]
    merged = _concat(records, source=str(folder))
    if merged.labels is not None and set(merged.classes) <= {"0", "1", "2", "3"}:
        # The notebook's integer codes are CinC 2017's classes in this order.
        names = [NOTEBOOK_CLASSES[int(c)] for c in merged.classes]
        merged.classes = names
    return merged


# ---------------------------------------------------------------------------------- tables


def read_table(path: Path, label_column: LabelColumn | None = None) -> Records:
    """One table file, or a *_TRAIN / *_TEST pair of them (the pair keeps its split)."""
    pair = _split_pair(path)
    if pair is None:
        return _read_one_table(path, label_column)
    parts = [_read_one_table(file, label_column, split=split) for split, file in pair]
    return _concat(parts, source=str(path))


def _read_one_table(path: Path, label_column: LabelColumn | None, split: str | None = None) -> Records:
    suffix = path.suffix.lower()
    id_prefix = path.stem
    if suffix in PICKLE_SUFFIXES or suffix == ".parquet":
        return _records_from_frame(_read_frame(path), path, split=split, id_prefix=id_prefix,
                                   label_column=label_column)
    default: LabelColumn = "first" if suffix in UCR_SUFFIXES else "last"
    return _read_wide_text(path, label_column or default, split=split)


def _read_frame(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_pickle(path)
    except Exception as exc:  # pickle and parquet raise many types for damaged files
        raise DataError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from None
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{path}: expected a pandas DataFrame, found {type(frame).__name__}")
    return frame


def _records_from_frame(frame: pd.DataFrame, path: Path, split: str | None, id_prefix: str,
                        label_column: LabelColumn | None = None) -> Records:
    if "signal" not in frame.columns:
        raise DataError(f"{path}: no 'signal' column (columns: {', '.join(map(str, frame.columns))})")
    signals = []
    for position, value in enumerate(frame["signal"]):
        try:
            signals.append(np.asarray(value, dtype=np.float32).reshape(-1))
        except (TypeError, ValueError):
            raise DataError(f"{path}: row {position} of 'signal' is not a numeric array") from None
    n = len(signals)
    ids = ([str(r) for r in frame["record"]] if "record" in frame.columns
           else [f"{id_prefix}_{i:05d}" for i in range(n)])
    classes: list[str] = []
    labels: np.ndarray | None = None
    if "label" in frame.columns and label_column != "none":
        classes, labels = encode_labels(list(frame["label"]), where=f"{path}: column 'label'")
    fs = None
    if "fs" in frame.columns:
        rates = pd.unique(frame["fs"])
        if len(rates) != 1:
            raise DataError(f"{path}: column 'fs' holds several sampling rates ({some_of(list(rates))})")
        fs = float(rates[0])
    groups = [str(g) for g in frame["group"]] if "group" in frame.columns else None
    splits: list[str] | None
    if "split" in frame.columns:
        splits = [str(s) for s in frame["split"]]
        unknown = sorted(set(splits) - {"train", "val", "test"})
        if unknown:
            raise DataError(f"{path}: column 'split' has values other than train/val/test: {some_of(unknown)}")
    else:
        splits = None if split is None else [split] * n
    return Records(signals=signals, labels=labels, classes=classes, record_ids=ids, groups=groups,
                   fs=fs, split=splits, source=str(path))


def _read_wide_text(path: Path, label_column: LabelColumn, split: str | None) -> Records:
    """UCR text or wide CSV: one record per row, fixed length, label in the first or last column."""
    separator = "," if path.suffix.lower() == ".csv" else r"\s+"
    try:
        frame = pd.read_csv(path, sep=separator, header=None, engine="c" if separator == "," else "python")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read table ({exc})") from None
    values = frame.apply(pd.to_numeric, errors="coerce")
    # A first row that is not numeric is a header: drop it.
    if len(values) and values.iloc[0].isna().all():
        values = values.iloc[1:]
        frame = frame.iloc[1:]
    if len(values) == 0:
        raise DataError(f"{path}: the table has no rows")
    n_columns = values.shape[1]
    if label_column == "none":
        data, raw_labels = values.to_numpy(np.float64), None
    else:
        if n_columns < 2:
            raise DataError(f"{path}: a labelled table needs a label column and at least one sample column")
        label_at = 0 if label_column == "first" else n_columns - 1
        numeric = values.iloc[:, label_at]
        # Numeric labels (1.0, -1) are named by their value; anything else by its text.
        raw_labels = numeric.tolist() if numeric.notna().all() else frame.iloc[:, label_at].tolist()
        data = values.drop(columns=values.columns[label_at]).to_numpy(np.float64)
    signals = []
    for row_number, row in enumerate(data, start=1):
        finite = np.isfinite(row)
        # UCR pads variable-length series with trailing NaN: trim those, refuse NaN inside.
        last = int(np.nonzero(finite)[0][-1]) + 1 if finite.any() else 0
        row = row[:last]
        if not np.isfinite(row).all():
            raise DataError(f"{path}: row {row_number} has non-numeric, NaN or infinite samples")
        signals.append(row.astype(np.float32))
    ids = [f"{path.stem}_{i:05d}" for i in range(len(signals))]
    classes, labels = (([], None) if raw_labels is None
                       else encode_labels(raw_labels, where=f"{path}: label column ({label_column})"))
    return Records(signals=signals, labels=labels, classes=classes, record_ids=ids,
                   split=None if split is None else [split] * len(signals), source=str(path))


def _split_pair(path: Path) -> list[tuple[str, Path]] | None:
    match = _SPLIT_NAME.search(path.name)
    if match is None:
        return None
    files = []
    for split, word in (("train", "TRAIN"), ("test", "TEST")):
        # sub calls the lambda right away, so late binding of `word` is harmless.
        name = _SPLIT_NAME.sub(lambda m: "_" + (word if m.group(1).isupper() else word.lower()),  # noqa: B023
                               path.name)
        candidate = path.with_name(name)
        if candidate.is_file():
            files.append((split, candidate))
    return files


def _ucr_pair_in_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in TABLE_SUFFIXES and _SPLIT_NAME.search(p.name)
                  and "TRAIN" in p.name.upper())


# ---------------------------------------------------------------------------------- helpers


def encode_labels(values: list, where: str) -> tuple[list[str], np.ndarray]:
    """Class names (sorted; numbers in numeric order) and integer labels for raw label values."""
    if any(v is None or (isinstance(v, float) and not np.isfinite(v)) for v in values):
        raise DataError(f"{where}: some labels are missing or NaN")
    names = [_label_name(v) for v in values]
    unique = set(names)

    def order(name: str) -> tuple[int, float, str]:
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)

    classes = sorted(unique, key=order)
    index = {name: i for i, name in enumerate(classes)}
    return classes, np.array([index[n] for n in names], dtype=np.int64)


def _label_name(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value).strip()


def _concat(parts: list[Records], source: str) -> Records:
    labelled = [p.labels is not None for p in parts]
    if any(labelled) and not all(labelled):
        raise DataError(f"{source}: some parts have labels and some do not")
    classes: list[str] = []
    labels = None
    if all(labelled):
        names = [p.classes[i] for p in parts if p.labels is not None for i in p.labels]  # all labelled here
        classes, labels = encode_labels(names, where=source)
    split = None
    if any(p.split is not None for p in parts):
        split = [s for p in parts for s in (p.split or ["train"] * len(p))]
    groups = None
    if any(p.groups is not None for p in parts):
        groups = [g for p in parts for g in (p.groups or p.record_ids)]
    rates = {p.fs for p in parts if p.fs is not None}
    return Records(
        signals=[s for p in parts for s in p.signals],
        labels=labels,
        classes=classes,
        record_ids=[r for p in parts for r in p.record_ids],
        groups=groups,
        fs=rates.pop() if len(rates) == 1 else None,
        split=split,
        source=source,
    )


def some_of(items: list, limit: int = 3) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
