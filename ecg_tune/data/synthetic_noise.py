"""The synthetic ECG's atrial activity and noise, added to the clean waveform of a record.

This module owns the signals data/synthetic.py adds to data/synthetic_beats.py's `render`:
AF's fibrillatory waves (`fibrillatory_waves`), every record's baseline wander and measurement
noise (`baseline_and_measurement_noise`), the artefacts of too-noisy records (`heavy_artefacts`)
and the mild ones of a few readable records (`mild_artefact`), all built from band-limited
Gaussian noise in the frequency domain. Everything draws from the record's own numpy generator.

Every record has baseline wander, measurement noise and sometimes mains hum; "too
noisy" records add strong wander, motion artefacts, electrode pops, EMG, lead-off segments
and saturation at the amplifier rails, of variable severity.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sp_fft

from ecg_tune.data.synthetic_beats import FS

__all__ = ["baseline_and_measurement_noise", "fibrillatory_waves", "heavy_artefacts", "mild_artefact"]


def _spectrum(n: int) -> tuple[int, np.ndarray]:
    """FFT length (>= n, fast) and the frequencies of its real-FFT bins."""
    m = sp_fft.next_fast_len(n, real=True)
    return m, np.fft.rfftfreq(m, 1.0 / FS)


def _add_band(rng: np.random.Generator, spec: np.ndarray, f: np.ndarray, m: int,
              lo: float, hi: float, std: float) -> None:
    """Add Gaussian noise limited to [lo, hi] Hz with standard deviation `std` (in expectation)
    to the real-FFT spectrum `spec` of length-m signal (scale: var = 4 * bins * a^2 / m^2)."""
    band = slice(int(np.searchsorted(f, lo)), int(np.searchsorted(f, hi, side="right")))
    nb = band.stop - band.start
    if nb <= 0:
        return
    a = std * m / (2.0 * np.sqrt(nb))
    spec[band] += a * (rng.standard_normal(nb) + 1j * rng.standard_normal(nb))


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Gaussian noise band-limited to [lo, hi] Hz with unit standard deviation (via one FFT)."""
    m, f = _spectrum(n)
    spec = np.zeros(len(f), dtype=np.complex128)
    _add_band(rng, spec, f, m, lo, hi, 1.0)
    return sp_fft.irfft(spec, m)[:n]


def fibrillatory_waves(rng: np.random.Generator, n: int, tags: list[str]) -> np.ndarray:
    """AF f-waves: a 4-9 Hz wandering oscillation with a harmonic and a slowly varying size."""
    f0 = rng.uniform(4.0, 9.0)
    freq = f0 + rng.uniform(0.2, 0.8) * _band_noise(rng, n, 0.02, 0.5)
    phase = 2 * np.pi * np.cumsum(np.clip(freq, 3.0, 10.0)) / FS
    wave = np.sin(phase) + rng.uniform(0.1, 0.4) * np.sin(2 * phase + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.3:
        size = rng.uniform(0.008, 0.03)   # fine AF: f-waves barely visible
        tags.append("fine_f")
    else:
        size = rng.uniform(0.03, 0.12)
    env = np.clip(1.0 + 0.35 * _band_noise(rng, n, 0.05, 0.5), 0.2, None)
    return size * env * wave


def baseline_and_measurement_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Every record: breathing-driven and slow baseline wander, white measurement noise and
    sometimes mains hum, all built in one spectrum and one inverse FFT (the cheap way)."""
    m, f = _spectrum(n)
    spec = np.zeros(len(f), dtype=np.complex128)

    def line(freq: float, amplitude: float) -> None:
        # A sinusoid of this amplitude on the nearest bin (frequency resolution 1 / duration).
        spec[int(round(freq * m / FS))] += amplitude * m / 2.0 * np.exp(2j * np.pi * rng.random())

    line(rng.uniform(0.15, 0.4), rng.uniform(0.01, 0.10))           # breathing
    _add_band(rng, spec, f, m, 0.03, 0.6, rng.uniform(0.02, 0.15))  # slow drift
    _add_band(rng, spec, f, m, f[1], f[-2], rng.uniform(0.004, 0.02))  # white noise
    if rng.random() < 0.3:
        line(50.0 if rng.random() < 0.5 else 60.0, rng.uniform(0.003, 0.02))
    return sp_fft.irfft(spec, m)[:n]


def _bursts(rng: np.random.Generator, n: int, count: int, min_s: float, max_s: float) -> np.ndarray:
    """An envelope in [0, 1] made of `count` Hann-shaped bursts of random length and place."""
    env = np.zeros(n)
    for _ in range(count):
        length = int(min(n, rng.uniform(min_s, max_s) * FS))
        if length < 4:
            continue
        start = int(rng.integers(0, n - length + 1))
        np.maximum(env[start:start + length], np.hanning(length), out=env[start:start + length])
    return env


def heavy_artefacts(rng: np.random.Generator, ecg: np.ndarray, tags: list[str]) -> np.ndarray:
    """Too-noisy records: two to four artefact kinds of variable severity, sometimes swamping
    the ECG everywhere, sometimes leaving clean stretches between the bad ones."""
    n = len(ecg)
    kinds = ["wander", "motion", "pops", "emg", "leadoff", "attenuate"]
    p = np.array([0.22, 0.26, 0.14, 0.20, 0.10, 0.08])
    if rng.random() < 0.15:
        # Hard case: borderline records, labelled noisy but close to a readable one with a
        # mild artefact (where annotators disagree in real data too).
        severity, count = rng.uniform(0.15, 0.3), int(rng.integers(1, 3))
        tags.append("borderline")
    else:
        severity, count = rng.uniform(0.3, 1.0), int(rng.integers(2, 5))
    names = [kinds[i] for i in rng.choice(len(kinds), size=count, replace=False, p=p)]
    tags.extend(names)
    x = ecg.copy()
    if "attenuate" in names:
        # Poor electrode contact: the ECG itself is small, so noise dominates.
        x *= rng.uniform(0.08, 0.35)
    if "wander" in names:
        x += severity * rng.uniform(0.4, 2.5) * _band_noise(rng, n, 0.05, 1.5)
    if "motion" in names:
        env = _bursts(rng, n, int(rng.integers(1, 7)), 0.8, 8.0)
        if rng.random() < 0.3:
            env = np.maximum(env, 0.5)  # motion throughout the record
        x += severity * rng.uniform(0.4, 3.0) * env * _band_noise(rng, n, 0.5, 12.0)
    if "emg" in names:
        env = _bursts(rng, n, int(rng.integers(1, 6)), 1.0, 10.0)
        if rng.random() < 0.4:
            env = np.ones(n)
        x += severity * rng.uniform(0.08, 0.6) * env * _band_noise(rng, n, 20.0, 140.0)
    if "pops" in names:
        # Electrode pops: a sudden step that decays as the electrode settles.
        for _ in range(int(rng.integers(1, 7))):
            i0 = int(rng.integers(0, n))
            tau = rng.uniform(0.1, 1.5) * FS
            step = rng.choice([-1.0, 1.0]) * severity * rng.uniform(0.8, 4.0)
            x[i0:] += step * np.exp(-np.arange(n - i0) / tau)
    if "leadoff" in names:
        # Lead off: a flat stretch (near a rail or zero) with only amplifier noise.
        for _ in range(int(rng.integers(1, 3))):
            length = int(min(n // 2, rng.uniform(1.0, 8.0) * FS))
            i0 = int(rng.integers(0, n - length + 1))
            level = rng.choice([0.0, rng.uniform(-4.0, 4.0)])
            x[i0:i0 + length] = level + 0.01 * rng.standard_normal(length)
    if rng.random() < 0.35:
        # Amplifier saturation: the signal is clipped at the rails.
        rail = rng.uniform(1.2, 3.5)
        x = np.clip(x, -rail, rail)
        tags.append("saturated")
    return x


def mild_artefact(rng: np.random.Generator, ecg: np.ndarray) -> np.ndarray:
    """A short motion burst or a little EMG on an otherwise readable record."""
    n = len(ecg)
    if rng.random() < 0.5:
        env = _bursts(rng, n, int(rng.integers(1, 3)), 0.5, 3.0)
        return ecg + rng.uniform(0.15, 0.6) * env * _band_noise(rng, n, 0.5, 8.0)
    return ecg + rng.uniform(0.02, 0.08) * _band_noise(rng, n, 20.0, 140.0)
