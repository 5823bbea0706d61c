"""The data layer: every source kind, bad inputs, the cache, splits and tensors."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CINC, SHARED_DATA, needs_shared_data

from ecg_tune.data import load, prepare, sources
from ecg_tune.data.records import Records
from ecg_tune.data.split import load_split, make_split, save_split
from ecg_tune.data.tensors import to_tensors
from ecg_tune.errors import DataError


def ecg_like(n: int, seed: int) -> np.ndarray:
    """A crude beat train (narrow spikes at ~1 Hz on a slow wave) for reader tests."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 300.0
    beats = np.exp(-((t % 0.8) - 0.4) ** 2 / (2 * 0.01**2))
    return (beats + 0.1 * np.sin(2 * np.pi * 0.3 * t) + 0.01 * rng.standard_normal(n)).astype(np.float32)


def write_wfdb_folder(folder: Path, labels: dict[str, str], lengths: dict[str, int] | None = None,
                      header: bool = True, crlf: bool = True) -> Path:
    import wfdb

    folder.mkdir(parents=True, exist_ok=True)
    for i, record in enumerate(labels):
        n = (lengths or {}).get(record, 900 + 37 * i)
        signal = ecg_like(n, i)[:, None].astype(np.float64)
        wfdb.wrsamp(record, fs=300, units=["mV"], sig_name=["ECG"], p_signal=signal, fmt=["16"],
                    adc_gain=[1000.0], baseline=[0], write_dir=str(folder))
    end = "\r\n" if crlf else "\n"
    rows = (["data_source,class"] if header else []) + [f"{r},{c}" for r, c in labels.items()]
    (folder / "REFERENCE.csv").write_text(end.join(rows) + end)
    return folder


LABELS = {f"R{i:03d}": "NAO~"[i % 4] for i in range(12)}


@pytest.mark.parametrize("header,crlf", [(True, True), (False, False), (False, True)])
def test_physionet_folder_reads_labels_gain_and_rate(tmp_path: Path, header: bool, crlf: bool) -> None:
    folder = write_wfdb_folder(tmp_path / "db", LABELS, header=header, crlf=crlf)
    records = load(str(folder), use_cache=False)
    assert len(records) == 12 and records.fs == 300.0
    assert records.classes == ["A", "N", "O", "~"]
    assert [records.classes[i] for i in records.labels] == list(LABELS.values())
    # Gain from the header: physical values in mV match what was written, to the ADC's resolution.
    np.testing.assert_allclose(records.signals[0], ecg_like(900, 0), atol=1e-3)


def test_physionet_folder_without_labels_is_unlabelled(tmp_path: Path) -> None:
    folder = write_wfdb_folder(tmp_path / "db", LABELS)
    (folder / "REFERENCE.csv").unlink()
    records = load(str(folder), use_cache=False)
    assert records.labels is None and len(records) == 12
    with pytest.raises(DataError, match="no labels"):
        make_split(records)


def test_label_file_naming_missing_records_is_an_error(tmp_path: Path) -> None:
    folder = write_wfdb_folder(tmp_path / "db", {"R000": "N", "R001": "A"})
    with open(folder / "REFERENCE.csv", "a") as handle:
        handle.write("R999,A\r\n")
    with pytest.raises(DataError, match=r"REFERENCE.csv.*1 record.*R999"):
        load(str(folder), use_cache=False)


def test_unreadable_record_is_named(tmp_path: Path) -> None:
    folder = write_wfdb_folder(tmp_path / "db", {"R000": "N", "R001": "A"})
    (folder / "R001.dat").write_bytes(b"")
    with pytest.raises(DataError, match="R001"):
        load(str(folder), use_cache=False)


@needs_shared_data
def test_mat_records_from_cinc(tmp_path: Path) -> None:
    folder = tmp_path / "cinc"
    folder.mkdir()
    for name in ("A00001", "A00002", "A00003"):
        for ext in (".hea", ".mat"):
            shutil.copy(CINC / f"{name}{ext}", folder)
    (folder / "REFERENCE.csv").write_text("A00001,N\nA00002,N\nA00003,A\n")
    records = load(str(folder), use_cache=False)
    assert records.fs == 300.0 and len(records.signals[0]) == 9000
    import scipy.io

    raw = scipy.io.loadmat(str(CINC / "A00001.mat"))["val"][0] / 1000.0
    np.testing.assert_allclose(records.signals[0], raw, atol=1e-6)


def test_notebook_pickles_keep_their_split_and_names(tmp_path: Path) -> None:
    folder = tmp_path / "nb"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train_df.pkl", 40), ("val_df.pkl", 10)):
        frame = pd.DataFrame({"signal": [ecg_like(int(rng.integers(900, 1500)), i) for i in range(n)],
                              "label": [i % 4 for i in range(n)]})
        frame.to_pickle(folder / name)
    records = load(str(folder), use_cache=False)
    assert records.classes == ["N", "A", "O", "~"]
    assert records.split.count("val") == 10
    split = make_split(records)
    assert (split[np.array(records.split) == "val"] == "val").all()  # the notebook's split is kept
    assert set(split) == {"train", "val", "test"}  # test carved from train


def test_parquet_table_with_optional_columns(tmp_path: Path) -> None:
    n = 30
    frame = pd.DataFrame({
        "signal": [ecg_like(600 + i, i) for i in range(n)],
        "label": ["AF" if i % 3 else "normal" for i in range(n)],
        "record": [f"p{i // 2}_r{i}" for i in range(n)],
        "group": [f"p{i // 2}" for i in range(n)],
        "fs": 250,
    })
    path = tmp_path / "table.parquet"
    frame.to_parquet(path)
    records = load(str(path), use_cache=False)
    assert records.fs == 250.0 and records.classes == ["AF", "normal"]
    split = make_split(records, seed=3)
    for group in set(records.groups):
        parts = {split[i] for i, g in enumerate(records.groups) if g == group}
        assert len(parts) == 1, f"patient {group} spans {parts}"


def test_table_without_label_is_unlabelled_and_without_signal_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "unlabelled.pkl"
    pd.DataFrame({"signal": [ecg_like(500, i) for i in range(5)]}).to_pickle(path)
    assert load(str(path), use_cache=False).labels is None
    bad = tmp_path / "bad.pkl"
    pd.DataFrame({"x": [1, 2]}).to_pickle(bad)
    with pytest.raises(DataError, match=r"bad.pkl.*no 'signal' column"):
        load(str(bad), use_cache=False)


def test_nan_samples_are_named(tmp_path: Path) -> None:
    signals = [ecg_like(500, i) for i in range(6)]
    signals[4][10] = np.nan
    path = tmp_path / "nan.pkl"
    pd.DataFrame({"signal": signals, "label": [0, 1] * 3, "record": [f"rec{i}" for i in range(6)]}).to_pickle(path)
    with pytest.raises(DataError, match=r"NaN or infinite.*rec4"):
        load(str(path), use_cache=False)


def test_empty_signal_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.pkl"
    signals = [ecg_like(500, 0), np.zeros(0, np.float32)]
    pd.DataFrame({"signal": signals, "label": [0, 1], "record": ["ok", "hollow"]}).to_pickle(path)
    with pytest.raises(DataError, match="empty record.*hollow"):
        load(str(path), use_cache=False)


def write_ucr(path: Path, n: int, length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = [np.concatenate([[1 if i % 2 else -1], rng.standard_normal(length)]) for i in range(n)]
    np.savetxt(path, np.array(rows), fmt="%.6e")


def test_ucr_pair_keeps_its_split(tmp_path: Path) -> None:
    write_ucr(tmp_path / "Toy_TRAIN.txt", 40, 96, 0)
    write_ucr(tmp_path / "Toy_TEST.txt", 20, 96, 1)
    records = load(str(tmp_path / "Toy_TRAIN.txt"), use_cache=False)
    assert records.classes == ["-1", "1"] and len(records) == 60
    assert records.split.count("test") == 20
    assert {len(s) for s in records.signals} == {96}
    # the folder holding the pair is a source too
    assert len(load(str(tmp_path), use_cache=False)) == 60


def test_wide_csv_label_last_with_header_and_override(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.standard_normal((20, 50))
    labels = np.arange(20) % 3
    frame = pd.DataFrame(np.column_stack([data, labels]), columns=[f"c{i}" for i in range(51)])
    path = tmp_path / "beats.csv"
    frame.to_csv(path, index=False)
    records = load(str(path), use_cache=False)
    assert records.classes == ["0", "1", "2"] and len(records.signals[0]) == 50
    np.testing.assert_allclose(records.signals[3], data[3], rtol=1e-6)
    first = tmp_path / "first.csv"
    pd.DataFrame(np.column_stack([labels, data])).to_csv(first, index=False, header=False)
    records = load(str(first), label_column="first", use_cache=False)
    np.testing.assert_allclose(records.signals[3], data[3], rtol=1e-6)
    assert load(str(first), label_column="none", use_cache=False).labels is None


@pytest.mark.parametrize("make,pattern", [
    (lambda p: str(p / "nope"), "no such file"),
    (lambda p: (p / "empty").mkdir() or str(p / "empty"), "no ECG records"),
    (lambda p: (p / "x.xyz").write_text("1") and str(p / "x.xyz"), "unknown format"),
    (lambda p: (p / "e.csv").write_text("") or str(p / "e.csv"), "empty"),
])
def test_bad_sources_give_one_line_errors(tmp_path: Path, make, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as info:
        load(make(tmp_path), use_cache=False)
    assert "\n" not in str(info.value)


def test_sources_are_read_by_the_reader_registered_for_their_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sources.SOURCES.names() == ["notebook", "physionet", "physionet_record", "synthetic", "table",
                                       "ucr_folder"]
    made = Records(signals=[np.ones(20, np.float32)], labels=None, classes=[], record_ids=["r"], fs=None)
    sources.SOURCES.register("toy")(lambda source, label_column, progress: made)
    try:
        monkeypatch.setattr(sources, "source_kind", lambda source: "toy")
        assert sources.read_source("anything") is made
    finally:
        sources.SOURCES.unregister("toy")


def test_cache_is_used_and_invalidated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_wfdb_folder(tmp_path / "db", LABELS)
    first = load(str(folder))
    calls = []
    real = sources.read_source
    monkeypatch.setattr("ecg_tune.data.read_source", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = load(str(folder))
    assert calls == [], "an unchanged source must come from the cache"
    assert second.record_ids == first.record_ids and second.classes == first.classes
    np.testing.assert_array_equal(second.labels, first.labels)
    for a, b in zip(first.signals, second.signals, strict=True):
        np.testing.assert_array_equal(a, b)
    (folder / "REFERENCE.csv").write_text("R000,N\nR001,A\n")
    third = load(str(folder))
    assert calls == [1] and len(third) == 2


def records_of(labels: list[int], groups: list[str] | None = None) -> Records:
    return Records(signals=[np.ones(10, np.float32)] * len(labels), labels=np.array(labels),
                   classes=["N", "A", "O", "~"], record_ids=[f"r{i}" for i in range(len(labels))],
                   groups=groups, source="test")


def test_split_is_stratified_seeded_and_saved(tmp_path: Path) -> None:
    labels = [0] * 500 + [1] * 80 + [2] * 250 + [3] * 30
    records = records_of(labels)
    split = make_split(records, seed=1)
    np.testing.assert_array_equal(split, make_split(records, seed=1))
    assert not np.array_equal(split, make_split(records, seed=2))
    for cls in range(4):
        members = split[np.array(labels) == cls]
        assert abs((members == "val").mean() - 0.15) < 0.03 and abs((members == "test").mean() - 0.15) < 0.03
    path = save_split(records, split, tmp_path / "split.csv")
    np.testing.assert_array_equal(load_split(path, records), split)


def test_rare_class_stays_in_train_with_a_warning() -> None:
    records = records_of([0] * 40 + [1] * 40 + [3] * 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        split = make_split(records)
    assert any("~" in str(w.message) and "train" in str(w.message) for w in caught)
    assert (split[-2:] == "train").all()


def test_single_class_and_too_few_records_are_errors() -> None:
    with pytest.raises(DataError, match="one class"):
        make_split(records_of([0] * 20))
    with pytest.raises(DataError, match="too few"):
        make_split(records_of([0, 1]))


def test_tensors_are_zscored_and_padded() -> None:
    rng = np.random.default_rng(0)
    signals = [rng.normal(3.0, 2.0, n).astype(np.float32) for n in (100, 250, 40)]
    records = Records(signals=signals, labels=np.array([0, 1, 0]), classes=["a", "b"],
                      record_ids=["x", "y", "z"])
    tensors = to_tensors(records)
    assert tensors.signals.shape == (3, 250) and tensors.signals.dtype == np.float32
    for row, signal in enumerate(signals):
        valid = tensors.signals[row, : len(signal)]
        assert abs(valid.mean()) < 1e-5 and abs(valid.std() - 1) < 1e-4
        assert (tensors.signals[row, len(signal):] == 0).all()
        np.testing.assert_allclose(valid * tensors.scale[row], signal - signal.mean(), atol=1e-4)


def test_synthetic_source_string() -> None:
    records = load("synthetic:60")
    assert len(records) == 60 and records.fs == 300.0
    with pytest.raises(DataError, match="synthetic:N"):
        load("synthetic:many")


@needs_shared_data
@pytest.mark.parametrize("source,n,classes", [
    ("seed_pickles", 200, ["N", "A", "O", "~"]),
    ("ucr/ECG200/ECG200_TRAIN.txt", 200, ["-1", "1"]),
    ("ucr/ECG5000/ECG5000_TRAIN.txt", 500, ["1", "2", "3", "4", "5"]),
])
def test_shared_sources_load_and_split(source: str, n: int, classes: list[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = prepare(str(SHARED_DATA / source), progress=False)
    assert len(dataset.records) == n and dataset.records.classes == classes
    assert set(dataset.split) == {"train", "val", "test"}


@needs_shared_data
@pytest.mark.slow
def test_cinc2017_loads_whole() -> None:
    records = load(str(CINC), progress=False)
    assert len(records) == 8528 and records.fs == 300.0
    assert records.class_counts() == {"A": 738, "N": 5050, "O": 2456, "~": 284}
