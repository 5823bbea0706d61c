"""The data layer: any source string -> checked, cached `Records`; splits; tensors.

`load(source)` is the one entry point every command uses (the `--data` option).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecg_tune.data import cache
from ecg_tune.data.records import Records
from ecg_tune.data.sources import LabelColumn, read_source, some_of, source_kind
from ecg_tune.data.tensors import TensorData
from ecg_tune.errors import DataError

__all__ = ["Dataset", "Records", "TensorData", "check_records", "load", "prepare"]


def load(source: str, label_column: LabelColumn | None = None, use_cache: bool = True,
         progress: bool = True) -> Records:
    """Read a source (see data/sources.py for the kinds), checked, through the Parquet cache.

    A second load of an unchanged source reads the cache instead of the original files.
    """
    source = str(source)
    kind = source_kind(source)
    path = None if kind == "synthetic" else Path(source).expanduser().resolve()
    entry = cache.cache_path(path, {"label_column": label_column}) if (path and use_cache) else None
    if entry is not None and entry.is_file():
        try:
            records = cache.read_records(entry)
        except Exception as exc:  # a damaged cache entry is rebuilt, never fatal
            warnings.warn(f"{entry}: unreadable cache entry rebuilt ({type(exc).__name__})", stacklevel=1)
        else:
            records.source = source
            return records
    started = time.perf_counter()
    records = read_source(source, label_column=label_column, progress=progress)
    records.source = source
    check_records(records)
    if entry is not None:
        try:
            cache.write_records(records, entry)
        except OSError as exc:
            warnings.warn(f"{entry}: could not write the data cache ({exc})", stacklevel=1)
        elapsed = time.perf_counter() - started
        if progress and elapsed > 5:
            print(f"read {len(records)} records from {source} in {elapsed:.0f} s; cached in {entry}",
                  file=sys.stderr)
    return records


def check_records(records: Records) -> None:
    """Refuse datasets that would train on something wrong: empty, non-finite or duplicate records."""
    where = records.source or "data"
    if len(records) == 0:
        raise DataError(f"{where}: no records")
    empty = [rid for rid, s in zip(records.record_ids, records.signals, strict=False) if s.size == 0]
    if empty:
        raise DataError(f"{where}: {len(empty)} empty record(s): {some_of(empty)}")
    bad = [rid for rid, s in zip(records.record_ids, records.signals, strict=False) if not np.isfinite(s).all()]
    if bad:
        raise DataError(f"{where}: {len(bad)} record(s) with NaN or infinite samples: {some_of(bad)}")
    if len(set(records.record_ids)) != len(records.record_ids):
        counts = Counter(records.record_ids)
        dupes = sorted(rid for rid, n in counts.items() if n > 1)
        raise DataError(f"{where}: record ids appear more than once: {some_of(dupes)}")
    if records.labels is not None and len(records.labels) != len(records):
        raise DataError(f"{where}: {len(records.labels)} labels for {len(records)} records")


@dataclass
class Dataset:
    """Loaded records, their tensors and the split every stage uses."""

    records: Records
    tensors: TensorData
    split: np.ndarray  # "train" / "val" / "test" per record

    def index(self, *parts: str) -> np.ndarray:
        """Positions of the records in the given parts, in record order."""
        return np.flatnonzero(np.isin(self.split, parts))

    def summary(self) -> str:
        lengths = self.records.lengths
        fs = f", {self.records.fs:g} Hz" if self.records.fs else ""
        counts = ", ".join(f"{name} {n}" for name, n in self.records.class_counts().items())
        parts = ", ".join(f"{part} {int((self.split == part).sum())}" for part in ("train", "val", "test"))
        return (f"{len(self.records)} records ({counts}); lengths {lengths.min()}-{lengths.max()} samples, "
                f"median {int(np.median(lengths))}{fs}; split {parts}")


def prepare(source: str, label_column: LabelColumn | None = None, split_file: str | Path | None = None,
            seed: int = 0, progress: bool = True, split_digest: str | None = None) -> Dataset:
    """Load a labelled source, split it (or read `split_file`, which must have `split_digest`
    when one is given), and build its tensors."""
    from ecg_tune.data.split import load_split, make_split, require_labels
    from ecg_tune.data.tensors import to_tensors

    records = load(source, label_column=label_column, progress=progress)
    require_labels(records)
    split = load_split(split_file, records, split_digest) if split_file else make_split(records, seed=seed)
    return Dataset(records=records, tensors=to_tensors(records), split=split)
