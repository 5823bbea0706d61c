"""Record-level evaluation: every record is covered whole by windows, and scored once.

A record longer than the network's input is cut into windows of the input length that overlap
(the last one ends at the record's end); a shorter record is one window, zero-padded at the end as
in training. Class probabilities are averaged over a record's windows, so scores are per record,
never per window, whatever the record's length. A model's fitted head kept apart from it
(models/head.py: cnn_svm's SVM stage) gives the probabilities in place of the network's own.

Outputs are float32 numpy arrays. The forward runs in fp32 unless told `precision="bf16"`: the
loop validates a bf16 run's epochs so (training/precision.py; on this CPU the forward of CinC's
start-point models is 1.6-1.9x faster in bf16, and validation is half the epoch of a short-input
model), while what is fitted or delivered (head features, the refit's test records, `predict`)
is computed in fp32.
"""

from __future__ import annotations

import numpy as np
import torch

from ecg_tune.data.tensors import TensorData
from ecg_tune.data.windows import window_starts
from ecg_tune.models.calibrate import softmax
from ecg_tune.models.head import FittedHead
from ecg_tune.training.network import Network
from ecg_tune.training.precision import Precision, autocast


def record_windows(lengths: np.ndarray, input_length: int, overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """(position in `lengths`, start) of every window, records in order."""
    owners, starts = [], []
    for position, length in enumerate(lengths):
        s = window_starts(int(length), input_length, overlap)
        owners.append(np.full(len(s), position, dtype=np.int64))
        starts.append(s)
    return np.concatenate(owners), np.concatenate(starts)


def gather_windows(signals: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor,
                   input_length: int) -> torch.Tensor:
    """Windows signals[row, start:start + input_length], zero beyond the matrix's width."""
    positions = starts[:, None] + torch.arange(input_length, device=starts.device)[None, :]
    inside = positions < signals.shape[1]
    flat = rows[:, None] * signals.shape[1] + positions.clamp(max=signals.shape[1] - 1)
    return signals.reshape(-1)[flat.reshape(-1)].reshape(len(rows), input_length) * inside


@torch.inference_mode()
def window_outputs(network: Network, data: TensorData, index: np.ndarray, normalisation: str,
                   overlap: float, device: torch.device, features: bool = False,
                   batch_size: int = 256, precision: Precision = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Per-window outputs for the records at `index`: logits, or features when `features`, the
    model's forward in `precision` (the transform in fp32, as in training).

    Returns (outputs of shape (n_windows, k), owner of each window as a position in `index`).
    """
    signals, _, scale = data.torch_views()
    owners, starts = record_windows(data.lengths[index], network.input_length, overlap)
    rows = torch.as_tensor(np.asarray(index)[owners])
    starts_t = torch.as_tensor(starts)
    was_training = network.training
    network.eval()
    outputs = []
    for begin in range(0, len(rows), batch_size):
        batch_rows = rows[begin:begin + batch_size]
        x = gather_windows(signals, batch_rows, starts_t[begin:begin + batch_size], network.input_length)
        if normalisation == "none":
            x = x * scale[batch_rows, None]
        inputs = network.inputs(x.to(device))
        with autocast(inputs.device, precision):
            out = network.model.features(inputs) if features else network.model(inputs)
        outputs.append(out.float().cpu())
    network.train(was_training)
    return torch.cat(outputs).numpy(), owners


def aggregate(window_probabilities: np.ndarray, owners: np.ndarray, n_records: int) -> np.ndarray:
    """Mean of the window probabilities of each record."""
    totals = np.zeros((n_records, window_probabilities.shape[1]), dtype=np.float64)
    np.add.at(totals, owners, window_probabilities)
    counts = np.bincount(owners, minlength=n_records)[:, None]
    return totals / np.maximum(counts, 1)


def record_probabilities(network: Network, head: FittedHead | None, data: TensorData, index: np.ndarray,
                         normalisation: str, overlap: float, device: torch.device,
                         precision: Precision = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """Per-record class probabilities: (the fitted `head`'s when it is kept apart from the model,
    the network's own).

    The network's own are returned too because the validation loss is computed from them. A head
    that is part of the model (`file` None), or None, leaves the network's own as the answer.
    """
    logits, owners = window_outputs(network, data, index, normalisation, overlap, device, precision=precision)
    own = aggregate(softmax(logits), owners, len(index))
    if head is None or head.file is None:  # the network's forward already applies a head in the model
        return own, own
    features, owners = window_outputs(network, data, index, normalisation, overlap, device, features=True,
                                      precision=precision)
    return aggregate(head.predict_proba(features), owners, len(index)), own
