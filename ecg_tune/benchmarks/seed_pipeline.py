"""The seed notebook's per-sample input pipeline, re-created as the baseline the benchmark beats.

One pandas row at a time: numpy augmentations (time warp with `scipy.signal.resample`, zero pad
or centre trim to the input length, `np.roll` shift, Gaussian noise, amplitude scaling), then the
transform per record (`pywt.wavedec(...)[0]` or `|FFT|`), then a torch batch. It applies the `all`
policy's ops on purpose (the notebook's own policy condition was wrong; speed is what is compared
here, not its defects). Used only by `benchmark pipeline`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pywt
import scipy.signal
import torch


def seed_augment(signal: np.ndarray, input_length: int, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(0.9, 1.1)
    x = scipy.signal.resample(signal, int(len(signal) * factor))
    if len(x) < input_length:
        x = np.pad(x, (0, input_length - len(x)))
    else:
        start = (len(x) - input_length) // 2
        x = x[start:start + input_length]
    x = np.roll(x, rng.integers(-100, 100))
    x = x + rng.normal(0, 0.1, len(x))
    return x * rng.uniform(0.8, 1.2)


def seed_transform(x: np.ndarray, transform: str, wavelet: str = "db2", levels: int = 6) -> np.ndarray:
    if transform == "wavelet":
        return pywt.wavedec(x, wavelet, level=levels)[0]
    if transform == "fourier":
        return np.abs(np.fft.fft(x))
    return x


def seed_batches(frame: pd.DataFrame, batch_size: int, input_length: int, transform: str,
                 seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches as the notebook's Dataset + DataLoader produced them, one row at a time."""
    rng = np.random.default_rng(seed)
    for begin in range(0, len(frame) - batch_size + 1, batch_size):
        xs, ys = [], []
        for i in range(begin, begin + batch_size):
            row = frame.iloc[i]
            x = seed_transform(seed_augment(np.asarray(row["signal"], dtype=np.float64), input_length, rng),
                               transform)
            xs.append(torch.tensor(x, dtype=torch.float32).unsqueeze(0))
            ys.append(int(row["label"]))
        yield torch.stack(xs), torch.tensor(ys)
