"""Train / validation / test splits at record level, stratified by class, by patient when known.

Windows are cut later, from records already assigned to a split, so no record (and no patient,
when the source has group ids) is ever on both sides. A source's own split is kept and only its
missing parts are carved from its train part. The split is saved as `split.csv` (record, split),
so that every later stage (search, refit, test evaluation) uses the same test records.

Cross-validation folds (`make_folds`) are dealt from the train + val records of a split and its
seed, never saved: the same split.csv and seed give the same folds to a search, its resume and
its refit, and split.csv keeps its three parts.

`load_split` takes a split file only as `save_split` could have written it: each record of the
data once, no other records, known part names, every part non-empty (what `make_split`
guarantees); anything else is a one-line DataError naming the file. `split_digest` fingerprints
which record is in which part, so that a stage that knows the digest of the split a search used
can refuse a split.csv edited since.
"""

from __future__ import annotations

import csv
import hashlib
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ecg_tune.data.records import Records
from ecg_tune.data.sources import some_of
from ecg_tune.errors import DataError

PARTS = ("train", "val", "test")
# A split file may leave records out of every part (e.g. a benchmark's --quick subset).
UNUSED = "unused"


def make_split(records: Records, val_fraction: float = 0.15, test_fraction: float = 0.15,
               seed: int = 0) -> np.ndarray:
    """The split ("train" / "val" / "test") of every record, as an array of strings."""
    where = records.source or "data"
    require_labels(records)
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"split fractions must be in (0, 1) and sum below 1 (val {val_fraction}, test {test_fraction})")
    split = np.array(records.split if records.split is not None else ["train"] * len(records), dtype=object)
    fractions = {part: f for part, f in (("val", val_fraction), ("test", test_fraction)) if part not in set(split)}
    if fractions:
        _carve(records, split, fractions, seed)
    _require_parts(records, split, where,
                   f"{len(records)} records are too few for a train/val/test split (the {{part}} part would be empty)")
    return split


def _require_parts(records: Records, split: np.ndarray, where: str, empty: str) -> None:
    """Every part holds records and the train part at least two classes; `empty` words the error
    for an empty part (with `{part}`)."""
    for part in PARTS:
        if not (split == part).any():
            raise DataError(f"{where}: " + empty.format(part=part))
    if records.labels is not None:
        train_classes = {records.classes[i] for i in records.labels[split == "train"]}
        if len(train_classes) < 2:
            raise DataError(f"{where}: the train part has a single class ({some_of(sorted(train_classes))})")


def require_labels(records: Records) -> None:
    """Training needs labels and at least two classes."""
    where = records.source or "data"
    if records.labels is None:
        raise DataError(f"{where}: the records have no labels (a label file or label column is needed to train)")
    present = sorted({records.classes[i] for i in np.unique(records.labels)})
    if len(present) < 2:
        raise DataError(f"{where}: all records have one class ({some_of(present)}); training needs at least two")


def make_folds(records: Records, split: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The fold (0..k-1) of every train or val record, -1 for the others (test, unused).

    Deals units (patients when the source has group ids, else records) class by class, a
    patient counting for the class most of their records have, each to the fold with the fewest
    records of that class so far (then the fewest records): every fold's validation part holds
    every class, and a patient is never on both sides of a fold.
    """
    where = records.source or "data"
    if k < 2:
        raise DataError(f"--cv {k}: cross-validation needs at least 2 folds")
    members, by_class = _units(records, np.isin(split, ("train", "val")))
    most, rarest = _most_folds(records, by_class)
    if k > most:
        kind = "patients" if records.groups is not None else "records"
        raise DataError(f"--cv {k}: {where} has {most} train+val {kind} of class {rarest}; "
                        f"at most {most} folds are possible")
    rng = np.random.default_rng([seed, _FOLD_STREAM])
    fold = np.full(len(records), -1, dtype=np.int64)
    sizes = np.zeros(k, dtype=np.int64)
    for label in sorted(by_class):
        units = sorted(by_class[label])
        rng.shuffle(units)
        units.sort(key=lambda unit: -len(members[unit]))  # large patients first; ties stay shuffled
        of_class = np.zeros(k, dtype=np.int64)
        for unit in units:
            target = min(range(k), key=lambda f: (of_class[f], sizes[f], f))
            fold[members[unit]] = target
            of_class[target] += len(members[unit])
            sizes[target] += len(members[unit])
    return fold


def most_folds(records: Records, split: np.ndarray) -> tuple[int, str]:
    """How many folds the train + val records allow (the rarest class's units) and that class."""
    return _most_folds(records, _units(records, np.isin(split, ("train", "val")))[1])


def _most_folds(records: Records, by_class: dict[int, list[str]]) -> tuple[int, str]:
    rarest = min(by_class, key=lambda label: (len(by_class[label]), label))
    return len(by_class[rarest]), records.classes[rarest]


# The folds' random stream, apart from the split's (which uses the seed itself).
_FOLD_STREAM = 0xF01D


def _units(records: Records, chosen: np.ndarray) -> tuple[dict[str, list[int]], dict[int, list[str]]]:
    """The units (patients, or records) among the `chosen` records: their members, and the units
    of each class (a patient counts for the class most of their records have)."""
    assert records.labels is not None  # callers split labelled records only
    labels = records.labels
    units = records.groups if records.groups is not None else records.record_ids
    members: dict[str, list[int]] = defaultdict(list)
    for index in np.flatnonzero(chosen):
        members[units[index]].append(int(index))
    by_class: dict[int, list[str]] = defaultdict(list)
    for unit, indices in members.items():
        by_class[Counter(int(labels[i]) for i in indices).most_common(1)[0][0]].append(unit)
    return members, by_class


def _carve(records: Records, split: np.ndarray, fractions: dict[str, float], seed: int) -> None:
    """Move units (patients, or records) from train into the missing parts, class by class."""
    rng = np.random.default_rng(seed)
    members, by_class = _units(records, split == "train")
    rare = []
    for label in sorted(by_class):
        class_units = sorted(by_class[label])
        rng.shuffle(class_units)
        n_records = sum(len(members[u]) for u in class_units)
        if len(class_units) < len(fractions) + 1:
            rare.append(records.classes[label])
            continue
        targets = {part: max(1, round(f * n_records)) for part, f in fractions.items()}
        position = 0
        for part, target in targets.items():
            taken = 0
            # Leave at least one unit of the class in train.
            while taken < target and position < len(class_units) - 1:
                for index in members[class_units[position]]:
                    split[index] = part
                taken += len(members[class_units[position]])
                position += 1
    if rare:
        warnings.warn(
            f"{records.source or 'data'}: class(es) {', '.join(rare)} too rare to appear in every split; "
            "kept in train only",
            stacklevel=1,
        )


def save_split(records: Records, split: np.ndarray, path: str | Path) -> Path:
    """Write `split.csv` with one `record,split` row per record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record", "split"])
        writer.writerows(zip(records.record_ids, split, strict=False))
    return path


def load_split(path: str | Path, records: Records, expected_digest: str | None = None) -> np.ndarray:
    """Read a `split.csv` back, in the order of `records` (see the module docstring for what it
    must hold). `expected_digest`: the `split_digest` of the split a search used; a file whose
    split differs is refused, since the search's results were measured on the other one."""
    path = Path(path)
    assigned = _read_split_rows(path)
    unknown_parts = sorted({part for part in assigned.values() if part not in (*PARTS, UNUSED)})
    if unknown_parts:
        raise DataError(f"{path}: unknown split names {some_of([repr(p) for p in unknown_parts])} "
                        f"(expected train, val, test or {UNUSED})")
    known = set(records.record_ids)
    strangers = [rid for rid in assigned if rid not in known]
    if strangers:
        raise DataError(f"{path}: {len(strangers)} record(s) not in {records.source or 'the data'}: "
                        f"{some_of(strangers)} (a split file of other data?)")
    missing = [rid for rid in records.record_ids if rid not in assigned]
    if missing:
        raise DataError(f"{path}: {len(missing)} record(s) of {records.source} are not in the split file: "
                        f"{some_of(missing)}")
    split = np.array([assigned[rid] for rid in records.record_ids], dtype=object)
    _require_parts(records, split, str(path), "the {part} part is empty")
    found = split_digest(records, split)
    if expected_digest is not None and found != expected_digest:
        raise DataError(f"{path}: not the split the search used (it was edited or replaced since: its "
                        f"digest is {found}, the search recorded {expected_digest}); restore it, or run a new search")
    return split


def split_digest(records: Records, split: np.ndarray) -> str:
    """A fingerprint of which record is in which part, whatever the row order."""
    digest = hashlib.sha256()
    for record, part in sorted(zip(records.record_ids, (str(p) for p in split), strict=True)):
        digest.update(f"{record}\t{part}\n".encode())
    return digest.hexdigest()[:16]


def _read_split_rows(path: Path) -> dict[str, str]:
    """record -> part from a record,split CSV (either column order, a spreadsheet's byte-order
    mark and spaces around fields allowed), refusing anything that is not one row per record."""
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark.
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [[field.strip() for field in row] for row in csv.reader(handle)]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the split file ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a CSV text file of record,split rows ({type(exc).__name__})") from None
    numbered = [(line, row) for line, row in enumerate(rows, start=1) if any(row)]  # blank lines are harmless
    if not numbered or sorted(numbered[0][1]) != ["record", "split"]:
        raise DataError(f"{path}: expected a CSV with columns record,split")
    record_column = numbered[0][1].index("record")
    assigned: dict[str, str] = {}
    repeated = []
    for line, row in numbered[1:]:
        if len(row) != 2 or not row[record_column]:
            raise DataError(f"{path}: line {line} is not a record,split row ({','.join(row)!r})")
        record, part = row[record_column], row[1 - record_column]
        if record in assigned:
            repeated.append(record)
        assigned[record] = part
    if repeated:
        raise DataError(f"{path}: record(s) listed more than once: {some_of(sorted(set(repeated)))}")
    return assigned
