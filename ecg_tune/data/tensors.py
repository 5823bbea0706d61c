"""Records -> `TensorData`: one zero-padded float32 matrix plus lengths, ready for batching by index.

The matrix holds every record z-scored over its own samples (zeros beyond its length), with the
per-record standard deviation kept in `scale`: `normalisation: zscore` uses the rows as they are,
`normalisation: none` multiplies a batch back by `scale` (amplitudes in the source's unit,
millivolts for ECG sources, with each record's mean removed so padding stays at zero). Doing the
normalisation once here, not per batch, keeps it off the training step (about 40 us/sample for a
CinC-sized batch when done per batch on this CPU).

The arrays are plain numpy so that a search puts them in Ray's object store once and every trial
reads them without a copy; `torch.from_numpy` views them. A training device that keeps the matrix
(training/device.py's `device_views`) holds its copy in `device_copies`, once per `TensorData`
(a trial's folds share it); it is never pickled.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ecg_tune.data.records import Records

if TYPE_CHECKING:
    # Imported where views are made, not here: reading records (predict --runtime onnx on a
    # device without PyTorch) goes through this package and must not need torch.
    import torch


@dataclass
class TensorData:
    signals: np.ndarray  # (n_records, max_length) float32, z-scored rows, zero-padded
    lengths: np.ndarray  # (n_records,) int64
    scale: np.ndarray  # (n_records,) float32: each record's standard deviation before z-scoring
    labels: np.ndarray | None  # (n_records,) int64, or None for unlabelled data
    classes: list[str]
    record_ids: list[str]
    fs: float | None = None
    # (signals, scale) copied to a training device, by device (training/device.py's
    # `device_views`); never pickled: a copy sent to another process moves them again there.
    device_copies: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "device_copies": {}}

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def max_length(self) -> int:
        return int(self.signals.shape[1])

    def median_length(self, index: np.ndarray | None = None) -> int:
        lengths = self.lengths if index is None else self.lengths[index]
        return int(np.median(lengths))

    def torch_views(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero-copy torch views of (signals, lengths, scale) on the CPU."""
        return (_view(self.signals), _view(self.lengths), _view(self.scale))


def to_tensors(records: Records) -> TensorData:
    """Pad and z-score every record into one matrix."""
    lengths = records.lengths
    matrix = np.zeros((len(records), int(lengths.max())), dtype=np.float32)
    scale = np.ones(len(records), dtype=np.float32)
    for row, signal in enumerate(records.signals):
        values = signal.astype(np.float64)
        mean = values.mean()
        std = values.std()
        # A flat record has no scale to divide by: keep it centred and unscaled.
        std = std if std > 1e-8 else 1.0
        matrix[row, : len(values)] = (values - mean) / std
        scale[row] = std
    return TensorData(
        signals=matrix,
        lengths=lengths.astype(np.int64),
        scale=scale,
        labels=None if records.labels is None else records.labels.astype(np.int64),
        classes=list(records.classes),
        record_ids=list(records.record_ids),
        fs=records.fs,
    )


def _view(array: np.ndarray) -> torch.Tensor:
    import torch

    if array.flags.writeable:
        return torch.from_numpy(array)
    # Object-store arrays are read-only; the training code never writes to these views, so
    # torch's warning about non-writable arrays does not apply.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
