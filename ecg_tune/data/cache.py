"""The Parquet cache of converted datasets, in a per-user cache folder, never beside the data.

A cached dataset is keyed by the source's absolute path, the reader options and the size and
modification time of every file the source consists of, so an edited or added file makes a new
entry. `ECG_TUNE_CACHE` overrides the folder; `ECG_TUNE_CACHE=off` turns caching off.

An entry carries a SHA-256 digest of its content (records, signals, labels, metadata), checked on
every read: a damaged entry raises instead of handing back different data (a flipped byte in a
Parquet data page otherwise decodes to other samples without any error), and the caller re-reads
the source. Hashing costs about 0.2 s per 300 MB of samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ecg_tune.data.records import Records

# Bump when a reader's output changes, so old entries are not reused.
# 2: entries carry their content digest (entries of 1 could not be checked).
CACHE_VERSION = 2


class DamagedEntry(Exception):
    """A cache entry that is not what this module wrote (the caller re-reads the source)."""


def cache_dir() -> Path | None:
    """The cache folder, or None when caching is off."""
    setting = os.environ.get("ECG_TUNE_CACHE")
    if setting and setting.lower() in {"off", "0", "none", "false"}:
        return None
    if setting:
        return Path(setting).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ecg-tune"))


def cache_key(source: Path, options: dict) -> str:
    """A digest of the source's path, its files' sizes and mtimes, and the reader options."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file())
    else:
        files = [source] + sorted(
            p for p in source.parent.iterdir()
            if p.is_file() and p != source
            and p.stem.upper().replace("_TEST", "_TRAIN") == source.stem.upper().replace("_TEST", "_TRAIN")
        )
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": CACHE_VERSION, "source": str(source), "options": options},
                             sort_keys=True).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def cache_path(source: Path, options: dict) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name)[:60]
    return folder / f"{name}-{cache_key(source, options)}.parquet"


def write_records(records: Records, path: Path) -> None:
    """Write Records as one Parquet file (atomically: a crash never leaves a half entry)."""
    lengths = records.lengths
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(records.signals).astype(np.float32) if len(records) else np.zeros(0, np.float32)
    columns = {
        "record": pa.array(records.record_ids, pa.string()),
        "signal": pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "label": (pa.array(records.labels, pa.int64()) if records.labels is not None
                 else pa.nulls(len(records), pa.int64())),
        "group": (pa.array(records.groups, pa.string()) if records.groups is not None
                 else pa.nulls(len(records), pa.string())),
        "split": (pa.array(records.split, pa.string()) if records.split is not None
                 else pa.nulls(len(records), pa.string())),
    }
    meta = {
        "classes": records.classes,
        "fs": records.fs,
        "source": records.source,
        "labelled": records.labels is not None,
        "has_groups": records.groups is not None,
        "has_split": records.split is not None,
    }
    table = pa.table(columns)
    offsets, flat = _signal_arrays(table)
    meta["digest"] = _digest(table, meta, offsets, flat)
    table = table.replace_schema_metadata({"ecg_tune": json.dumps(meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def read_records(path: Path) -> Records:
    """An entry written by `write_records`; raises (DamagedEntry, or pyarrow's errors) for
    anything else, including an entry whose content no longer matches its digest."""
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"ecg_tune")
    if raw is None:
        raise DamagedEntry("no ecg_tune metadata")
    meta = json.loads(raw)
    if not isinstance(meta, dict):
        raise DamagedEntry("damaged ecg_tune metadata")
    recorded = meta.pop("digest", None)
    offsets, flat = _signal_arrays(table)
    if recorded != _digest(table, meta, offsets, flat):
        raise DamagedEntry("content does not match its digest")
    signals = [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    return Records(
        signals=signals,
        labels=table.column("label").to_numpy().astype(np.int64) if meta["labelled"] else None,
        classes=list(meta["classes"]),
        record_ids=table.column("record").to_pylist(),
        groups=table.column("group").to_pylist() if meta["has_groups"] else None,
        fs=meta["fs"],
        split=table.column("split").to_pylist() if meta["has_split"] else None,
        source=meta["source"],
    )


def _signal_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The signal column as record offsets and the flat float32 samples."""
    signal = table.column("signal").combine_chunks()
    offsets = signal.offsets.to_numpy()
    flat = signal.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return offsets - offsets[0], flat[offsets[0]:offsets[-1]]


def _digest(table: pa.Table, meta: dict, offsets: np.ndarray, flat: np.ndarray) -> str:
    """SHA-256 of everything an entry gives back, computed the same way on write and read."""
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in ("record", "label", "group", "split"):
        digest.update(json.dumps(table.column(name).to_pylist()).encode())
    digest.update(np.ascontiguousarray(offsets, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(flat).tobytes())
    return digest.hexdigest()
