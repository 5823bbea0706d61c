"""Where the windows that cover a long record start: one rule for training's record-level
evaluation (training/evaluate.py) and for the torch-free ONNX runtime (onnx_runtime.py), so a
deployed model averages the same windows the search validated. numpy only."""

from __future__ import annotations

import numpy as np


def window_starts(length: int, input_length: int, overlap: float) -> np.ndarray:
    """Start positions of the windows covering a record of `length` samples: every
    round(input_length * (1 - overlap)) samples, the last one ending at the record's end; one
    window at 0 for a record no longer than the input."""
    if length <= input_length:
        return np.zeros(1, dtype=np.int64)
    hop = max(1, int(round(input_length * (1.0 - overlap))))
    starts = np.arange(0, length - input_length + 1, hop, dtype=np.int64)
    if starts[-1] != length - input_length:
        starts = np.append(starts, length - input_length)
    return starts
