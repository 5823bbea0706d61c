"""The delivered model without PyTorch: `model.onnx` run by onnxruntime, and everything around it.

This module owns the torch-free side of a bundle: the sampling rate (`at_rate`, `resample`:
polyphase resampling to the bundle's rate, which the torch `predict` uses too), the statistics
the graph normalises a window with (`record_stats`), the windows a record is cut into
(`window_starts`) and their average (`OnnxModel.predict_signals`), and the onnxruntime session.
It imports numpy, scipy (resampling) and onnxruntime only (onnxruntime when a model is opened),
never torch: `predict --runtime onnx` runs where PyTorch is not installed.

What the graph (written by onnx_export.py) takes and gives, as `onnx.json` beside it records:

- one input pair per *windowing* (input length, overlap), `signal_<g>` (windows, input_length)
  float64: the record's raw samples of that window, zero beyond the record's end, and `stats_<g>`
  (windows, 3) float64: the record's mean and standard deviation (population; 1 when at most
  1e-8, as the data layer does), and how many samples of the window are the record's. The graph
  z-scores with them (and multiplies the scale back for `normalisation: none`), so a window of a
  long record is normalised with its record's statistics, exactly as training and the torch
  `predict` did (data/tensors.py normalises records, not windows);
- one output per windowing, `probabilities_<g>` (windows, classes): the window's class
  probabilities, already weighted by the share of the team's members that window that way (1
  for a single model); a record's answer is the sum over windowings of the mean over its windows.

The window positions and the average are training/evaluate.py's (`window_starts`, `aggregate`),
restated here in numpy because that module needs torch; tests/test_onnx.py checks both agree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecg_tune.data.windows import window_starts
from ecg_tune.errors import DataError, EcgTuneError

if TYPE_CHECKING:
    from ecg_tune.data.records import Records

ONNX_FILE, ONNX_META = "model.onnx", "onnx.json"
INT8_FILE = "model.int8.onnx"
ONNX_FORMAT = 1
# A std at or below this is a flat record, kept centred and unscaled (data/tensors.py's rule).
FLAT_STD = 1e-8


def record_stats(signal: np.ndarray) -> tuple[float, float]:
    """(mean, std) of a record in float64, std 1 for a flat record: what the graph z-scores with."""
    values = np.asarray(signal, dtype=np.float64)
    mean, std = float(values.mean()), float(values.std())
    return mean, (std if std > FLAT_STD else 1.0)


def cut_windows(signals: Sequence[np.ndarray], input_length: int,
                overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every record's windows as the graph's inputs: (signal (W, input_length) float64,
    stats (W, 3) float64, owner (W,): the record each window belongs to)."""
    counts = [len(window_starts(len(s), input_length, overlap)) for s in signals]
    windows = np.zeros((sum(counts), input_length), dtype=np.float64)
    stats = np.zeros((len(windows), 3), dtype=np.float64)
    owners = np.repeat(np.arange(len(signals)), counts)
    row = 0
    for signal in signals:
        values = np.asarray(signal, dtype=np.float64)
        mean, std = record_stats(values)
        for start in window_starts(len(values), input_length, overlap):
            piece = values[start:start + input_length]
            windows[row, :len(piece)] = piece
            stats[row] = (mean, std, len(piece))
            row += 1
    return windows, stats, owners


def mean_by_record(window_values: np.ndarray, owners: np.ndarray, n_records: int) -> np.ndarray:
    """The mean of each record's window rows, in float64 (training/evaluate.py's `aggregate`)."""
    totals = np.zeros((n_records, window_values.shape[1]), dtype=np.float64)
    np.add.at(totals, owners, window_values)
    return totals / np.maximum(np.bincount(owners, minlength=n_records), 1)[:, None]


def resample(signals: Sequence[np.ndarray], fs: float, target_fs: float, source: str) -> list[np.ndarray]:
    """`signals` at `fs` Hz brought to `target_fs` Hz (polyphase, exact rational ratio), float32."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(target_fs / fs).limit_denominator(1000)
    if ratio.numerator == 0:
        raise DataError(f"{source}: {fs:g} Hz is too far from the model's {target_fs:g} Hz to resample "
                        "(more than 1000:1)")
    return [resample_poly(np.asarray(s, dtype=np.float64), ratio.numerator, ratio.denominator).astype(np.float32)
            for s in signals]


def at_rate(records: Records, bundle_fs: float | None, assumed_fs: float | None = None) -> Records:
    """Records resampled to the bundle's sampling rate (`assumed_fs`: the rate of records that
    state none, --fs)."""
    from dataclasses import replace

    fs = records.fs or assumed_fs
    if fs is not None and not (math.isfinite(fs) and fs > 0):
        given = " (--fs)" if records.fs is None else ""
        raise DataError(f"{records.source}: the sampling rate must be a positive number of Hz, got {fs:g}{given}")
    if bundle_fs is None or fs is None or abs(fs - bundle_fs) < 1e-9:
        if bundle_fs is not None and fs is None:
            raise DataError(f"{records.source}: the sampling rate is unknown and the model expects "
                            f"{bundle_fs:g} Hz; give it with --fs")
        return records
    return replace(records, signals=resample(records.signals, fs, bundle_fs, records.source), fs=bundle_fs,
                   groups=None, split=None, extra={})


@dataclass(frozen=True)
class Windowing:
    """One input pair of the graph and the windows it takes (see the module docstring)."""

    signal: str  # input names
    stats: str
    output: str
    input_length: int
    overlap: float


def read_meta(folder: Path) -> dict[str, Any]:
    """onnx.json of the bundle in `folder`, checked for what the runtime reads."""
    path = folder / ONNX_META
    if not path.is_file():
        raise EcgTuneError(f"{folder}: no {ONNX_META} (a bundle exported before ONNX, or its export failed: "
                           f"run `ecg-tune export --model {folder}`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EcgTuneError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != ONNX_FORMAT:
        raise EcgTuneError(f"{path}: not an onnx.json of format {ONNX_FORMAT}")
    try:
        classes = [str(c) for c in meta["classes"]]
        if meta["fs"] is not None:
            float(meta["fs"])
        for entry in meta["windowings"]:
            Windowing(**entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise EcgTuneError(f"{path}: missing or malformed entry ({type(exc).__name__}: {exc})") from None
    if len(classes) < 2 or not meta["windowings"]:
        raise EcgTuneError(f"{path}: needs at least two classes and one windowing")
    return meta


class OnnxModel:
    """A bundle's ONNX graph in an onnxruntime session; predicts records as `Bundle.predict` does.

    `onnx_file`: the graph to run (default model.onnx; e.g. model.int8.onnx), a name in the
    bundle folder or a path. `threads`: onnxruntime's intra-op threads (1: one core, as a device).
    """

    def __init__(self, folder: str | Path, onnx_file: str | Path | None = None, threads: int = 1) -> None:
        self.folder = Path(folder)
        meta = read_meta(self.folder)
        self.classes: list[str] = [str(c) for c in meta["classes"]]
        self.fs: float | None = None if meta["fs"] is None else float(meta["fs"])
        self.windowings = [Windowing(**entry) for entry in meta["windowings"]]
        # Windows per run: bounds the memory of wide intermediates (minirocket's comparisons).
        self.batch_size = int(meta.get("batch_size", 64))
        path = Path(onnx_file) if onnx_file is not None else Path(meta.get("graph", ONNX_FILE))
        self.path = path if path.is_absolute() or path.parent != Path(".") else self.folder / path
        self.session = open_session(self.path, threads)

    def predict(self, records: Records) -> np.ndarray:
        """Per-record class probabilities (n_records, n_classes) for records at the bundle's rate."""
        return self.predict_signals(records.signals)

    def predict_signals(self, signals: Sequence[np.ndarray]) -> np.ndarray:
        """Per-record class probabilities (float64) of 1-D signals at the bundle's rate."""
        cut = [cut_windows(signals, w.input_length, w.overlap) for w in self.windowings]
        outputs: list[list[np.ndarray]] = [[] for _ in self.windowings]
        # Every run feeds every input pair (onnxruntime needs them all), a slice of each windowing's
        # windows; a windowing with none left gets one blank window, whose output is dropped.
        for begin in range(0, max(len(windows) for windows, _, _ in cut), self.batch_size):
            feeds, taken = {}, []
            for windowing, (windows, stats, _) in zip(self.windowings, cut, strict=True):
                piece, piece_stats = windows[begin:begin + self.batch_size], stats[begin:begin + self.batch_size]
                taken.append(len(piece))
                if not len(piece):
                    piece, piece_stats = np.zeros((1, windowing.input_length)), np.array([[0.0, 1.0, 0.0]])
                feeds[windowing.signal], feeds[windowing.stats] = piece, piece_stats
            found = self.session.run([w.output for w in self.windowings], feeds)
            for into, values, rows in zip(outputs, found, taken, strict=True):
                into.append(values[:rows])
        total = np.zeros((len(signals), len(self.classes)), dtype=np.float64)
        for values, (_, _, owners) in zip(outputs, cut, strict=True):
            total += mean_by_record(np.concatenate(values), owners, len(signals))
        return total


def open_session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session on `path` with `threads` intra-op threads (one-line errors)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise EcgTuneError("onnxruntime is not installed: pip install 'ecg-tune[deploy]' (or onnxruntime)") from None
    if not path.is_file():
        raise EcgTuneError(f"{path}: no such ONNX file (run `ecg-tune export --model {path.parent}`)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...) for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EcgTuneError(f"{path}: onnxruntime cannot load it ({first})") from None
