"""The embedded synthetic data source: realistic single-lead ECG at 300 Hz, no download.

This module owns `generate(n_records, seed)`, which returns a labelled `Records` set in the style
of the PhysioNet/CinC 2017 challenge (classes N normal sinus rhythm, A atrial fibrillation,
O other rhythm, ~ too noisy; 9 to 60 s, most exactly 30 s; millivolts). It exists so that every
part of the pipeline (loading, splitting, transforms, training, the search) can run and be
tested on a machine without the real data, and so that a model's score on it means something:
the classes differ by the physiology a real classifier must learn, not by a shortcut.

How a record is made (all vectorised numpy, one child seed per record):
- Beats: each beat is a sum of Gaussians (P, Q, R, R', S and a two-Gaussian asymmetric T)
  placed around its R time, in the spirit of McSharry et al.'s ECGSYN (written here from the
  idea, not from their code). Amplitudes, widths, PR interval and QTc vary per record; the QT
  interval follows the preceding RR interval (Fridericia), amplitudes jitter per beat and the R
  amplitude follows respiration.
- Rhythm: an RR-interval series. Sinus rhythm has heart rate variability (a respiratory and a
  low-frequency component plus jitter and a slow drift); AF draws RR intervals independently
  (irregularly irregular), removes P waves and adds a 4-9 Hz fibrillatory baseline; "other"
  mixes ectopic beats (PVCs with wide QRS and a compensatory pause, PACs with an abnormal P and
  a reset), bigeminy, sinus brady-/tachycardia, first-degree AV block, bundle branch block
  and T-wave inversion.
- Noise: every record has baseline wander, measurement noise and sometimes mains hum; "too
  noisy" records add strong wander, motion artefacts, electrode pops, EMG, lead-off segments
  and saturation at the amplifier rails, of variable severity.
- Hard cases on purpose, so that a good model does not reach 100 %: sinus arrhythmia in N,
  AF with fairly regular RR or with artefacts, O with only one or two ectopic beats, clean-ish
  segments in noisy records, a few inverted (reversed-lead) records in every class.

Determinism: the same (n_records, seed) gives identical arrays. Record i is drawn from its own
child seed (SeedSequence(seed, spawn_key=(i,))), label included, so it does not depend on
n_records unless the small-set fix-up (every class gets at least MIN_PER_CLASS records)
had to relabel it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import fft as sp_fft

from ecg_tune.data.records import Records
from ecg_tune.errors import DataError

__all__ = ["CLASSES", "CLASS_PROBS", "FS", "MIN_PER_CLASS", "MIN_RECORDS", "generate"]

CLASSES = ["N", "A", "O", "~"]
FS = 300.0

# CinC 2017 is N 59 %, A 9 %, O 29 %, ~ 3 %; less extreme here so small sets hold every class.
CLASS_PROBS = np.array([0.50, 0.15, 0.25, 0.10])
# Every class needs a few records (a stratified split needs >= 2 per class), hence the minimum.
MIN_PER_CLASS = 2
MIN_RECORDS = MIN_PER_CLASS * len(CLASSES)  # 8

_N, _A, _O, _NOISY = 0, 1, 2, 3
# Wave components of one beat, in column order.
_P, _Q, _R, _R2, _S, _TA, _TB = range(7)
_NCOMP = 7
_SINUS, _PVC, _PAC = 0, 1, 2

# Subtypes of "other rhythm" and how often each is picked (a record takes one or two).
_O_SUBTYPES = ("pvc", "pac", "bigeminy", "brady", "tachy", "avb1", "bbb", "tinv")
_O_WEIGHTS = np.array([0.26, 0.17, 0.09, 0.10, 0.11, 0.10, 0.09, 0.08])


def generate(n_records: int, seed: int = 0) -> Records:
    """Generate `n_records` labelled synthetic ECG records (300 Hz, mV), deterministic in `seed`.

    Raises DataError when n_records is below MIN_RECORDS (every class needs MIN_PER_CLASS
    records) or when an argument is not a non-negative integer.
    """
    if isinstance(n_records, bool) or not isinstance(n_records, (int, np.integer)):
        raise DataError(f"synthetic: n_records must be an integer, got {n_records!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    n_records = int(n_records)
    if n_records < MIN_RECORDS:
        raise DataError(
            f"synthetic: n_records={n_records} is too small; need at least {MIN_RECORDS} "
            f"({MIN_PER_CLASS} per class for {len(CLASSES)} classes)"
        )

    rngs = [np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(i,)))
            for i in range(n_records)]
    # The label is the first draw of each record's own stream: record i keeps its label (and so
    # its signal) whatever n_records is, except when the fix-up below must relabel it.
    u = np.array([rng.random() for rng in rngs])
    labels = _fix_labels(np.searchsorted(np.cumsum(CLASS_PROBS), u * CLASS_PROBS.sum(),
                                         side="right").clip(0, len(CLASSES) - 1))

    signals: list[np.ndarray] = []
    kinds: list[str] = []
    for rng, label in zip(rngs, labels, strict=False):
        sig, kind = _record(rng, int(label))
        signals.append(sig)
        kinds.append(kind)

    return Records(
        signals=signals,
        labels=labels.astype(np.int64),
        classes=list(CLASSES),
        record_ids=[f"S{i + 1:05d}" for i in range(n_records)],
        groups=None,
        fs=FS,
        split=None,
        source=f"synthetic:{n_records}",
        # What each record was made of ("O:pvc+avb1", "A:af+regular", ...): tests, debugging.
        extra={"seed": int(seed), "kind": kinds},
    )


def _fix_labels(labels: np.ndarray) -> np.ndarray:
    """Give every class at least MIN_PER_CLASS records by relabelling the last records of the
    currently largest class (deterministic; touches nothing when the draw is already fine)."""
    labels = labels.copy()
    for c in range(len(CLASSES)):
        while (labels == c).sum() < MIN_PER_CLASS:
            counts = np.bincount(labels, minlength=len(CLASSES))
            donor = int(np.argmax(counts))
            labels[np.flatnonzero(labels == donor)[-1]] = c
    return labels


# --------------------------------------------------------------------------------------------
# One record


def _record(rng: np.random.Generator, label: int) -> tuple[np.ndarray, str]:
    """One record of class `label`: the float32 signal (mV) and a "class:tags" description."""
    dur = _duration(rng, label)
    n = int(round(dur * FS))
    tpl = _template(rng)
    tags: list[str] = []

    if label == _N:
        rhythm = _sinus(rng, dur, tpl, tags, sinus_arrhythmia=rng.random() < 0.15)
    elif label == _A:
        rhythm = _af(rng, dur, tpl, tags)
    elif label == _O:
        rhythm = _other(rng, dur, tpl, tags)
    else:
        # A noisy record still holds some rhythm underneath (mostly sinus, as in CinC).
        r = rng.random()
        if r < 0.7:
            rhythm = _sinus(rng, dur, tpl, tags, sinus_arrhythmia=False)
        elif r < 0.85:
            rhythm = _af(rng, dur, tpl, tags)
        else:
            rhythm = _other(rng, dur, tpl, tags)
    ecg = _render(rng, n, dur, rhythm)

    if label == _A:
        ecg += _fibrillatory_waves(rng, n, tags)
    if label == _NOISY and tags and tags[0] == "af":
        ecg += _fibrillatory_waves(rng, n, [])

    ecg += _baseline_and_measurement_noise(rng, n)

    if label == _NOISY:
        ecg = _heavy_artefacts(rng, ecg, tags)
    elif rng.random() < 0.12:
        # Hard case: some records of the rhythm classes carry a mild artefact too, so that
        # "any artefact at all" does not identify the noisy class.
        ecg = _mild_artefact(rng, ecg)
        tags.append("mild_noise")

    if rng.random() < 0.05:
        # Reversed lead (the handheld device held the other way round), as seen in CinC.
        ecg = -ecg
        tags.append("inverted")

    # The device records int16 at 1000 adu/mV: quantise to 1 uV like the real data.
    sig = (np.round(ecg * 1000.0) / 1000.0).astype(np.float32)
    return sig, f"{CLASSES[label]}:{'+'.join(tags) if tags else 'plain'}"


def _duration(rng: np.random.Generator, label: int) -> float:
    """Recording length in seconds: 9-60 s, most exactly 30 s (as in CinC 2017).

    Per-class differences are small on purpose (noisy slightly shorter, other slightly longer,
    as in CinC) so that a duration-only model stays weak.
    """
    p30, p_short = {_N: (0.70, 0.60), _A: (0.70, 0.60), _O: (0.70, 0.52),
                    _NOISY: (0.58, 0.72)}[label]
    if rng.random() < p30:
        return 30.0
    if rng.random() < p_short:
        return float(rng.uniform(9.0, 30.0))
    return float(rng.uniform(30.0, 60.0))


def _template(rng: np.random.Generator) -> dict:
    """Per-record beat morphology: offsets (s from the R peak), amplitudes (mV), widths (s)."""
    r_amp = float(np.clip(rng.lognormal(np.log(1.0), 0.3), 0.45, 1.8))
    off = np.array([0.0, -rng.uniform(0.022, 0.032), 0.0, 0.06, rng.uniform(0.024, 0.036),
                    0.0, 0.0])
    amp = np.array([
        rng.uniform(0.07, 0.22),                 # P
        -rng.uniform(0.0, 0.12) * r_amp,         # Q (often absent)
        r_amp,                                   # R
        0.0,                                     # R' (bundle branch block only)
        -rng.uniform(0.05, 0.40) * r_amp,        # S
        0.0, 0.0,                                # T, set below
    ])
    sd = np.array([rng.uniform(0.018, 0.030), rng.uniform(0.006, 0.010),
                   rng.uniform(0.008, 0.013), 0.012, rng.uniform(0.007, 0.012),
                   rng.uniform(0.040, 0.060), rng.uniform(0.022, 0.032)])
    t_amp = rng.uniform(0.12, 0.40) * (0.6 + 0.4 * r_amp)
    amp[_TA], amp[_TB] = 0.75 * t_amp, 0.55 * t_amp
    return {
        "off": off, "amp": amp, "sd": sd,
        "pr": rng.uniform(0.12, 0.19),          # P peak to R peak, s
        "qtc": rng.uniform(0.37, 0.44),         # corrected QT, s (Fridericia)
        "resp_f": rng.uniform(0.15, 0.40),      # breathing rate, Hz
        "resp_amp": rng.uniform(0.02, 0.10),    # R amplitude modulation by breathing
    }


# --------------------------------------------------------------------------------------------
# Rhythms


class _Rhythm(NamedTuple):
    """What _render needs: RR intervals (rr[k] precedes beat k), beat types (_SINUS, _PVC,
    _PAC), the beat template, whether sinus beats have P waves, and the time of beat 1 (s)."""

    rr: np.ndarray
    btype: np.ndarray
    tpl: dict
    p_present: bool
    t_start: float


def _n_beats(dur: float, rr0: float) -> int:
    # Generously many beats: irregular rhythms and ectopic pauses must still cover the record.
    return int((dur + 3.0) / (0.5 * rr0)) + 8


def _sinus_rr(rng: np.random.Generator, dur: float, hr: float, arrhythmia: bool,
              resp_f: float) -> np.ndarray:
    """Sinus RR intervals with heart rate variability (respiratory + low-frequency + jitter)."""
    rr0 = 60.0 / hr
    k = _n_beats(dur, rr0)
    t_nom = np.arange(k) * rr0
    a_resp = rng.uniform(0.05, 0.12) if arrhythmia else rng.uniform(0.005, 0.035)
    a_lf = rng.uniform(0.005, 0.03)
    mod = (a_resp * np.sin(2 * np.pi * resp_f * t_nom + rng.uniform(0, 2 * np.pi))
           + a_lf * np.sin(2 * np.pi * rng.uniform(0.04, 0.12) * t_nom + rng.uniform(0, 2 * np.pi))
           + rng.uniform(0.003, 0.012) * rng.standard_normal(k)
           + rng.uniform(-0.06, 0.06) * (t_nom / max(dur, 1.0) - 0.5))  # slow drift
    return rr0 * (1.0 + mod)


def _sinus(rng: np.random.Generator, dur: float, tpl: dict, tags: list[str],
           sinus_arrhythmia: bool, hr: float | None = None, pr: float | None = None) -> _Rhythm:
    """Sinus rhythm with P waves (rate and PR interval may be forced by _other)."""
    hr = float(np.clip(rng.normal(74.0, 10.0), 56.0, 98.0)) if hr is None else hr
    rr = _sinus_rr(rng, dur, hr, sinus_arrhythmia, tpl["resp_f"])
    if sinus_arrhythmia:
        tags.append("sinus_arrhythmia")
    if pr is not None:
        tpl["pr"] = pr
    btype = np.zeros(len(rr), dtype=np.int8)
    return _Rhythm(rr, btype, tpl, True, rng.uniform(0.0, rr[0]))


def _af(rng: np.random.Generator, dur: float, tpl: dict, tags: list[str]) -> _Rhythm:
    """Irregularly irregular RR: independent draws; a fraction is only mildly irregular."""
    rr0 = 60.0 / float(np.clip(rng.normal(95.0, 18.0), 60.0, 150.0))
    if rng.random() < 0.2:
        cv = rng.uniform(0.06, 0.12)   # hard case: fairly regular ventricular response
        tags.append("regular")
    else:
        cv = rng.uniform(0.13, 0.35)
    k = _n_beats(dur, rr0)
    sigma = np.sqrt(np.log1p(cv * cv))
    rr = rr0 * rng.lognormal(-0.5 * sigma * sigma, sigma, size=k)
    rr *= 1.0 + rng.uniform(-0.05, 0.05) * (np.cumsum(rr) / max(dur, 1.0) - 0.5)
    rr = np.maximum(rr, 0.27)  # AV node refractory period
    btype = np.zeros(k, dtype=np.int8)
    tags.insert(0, "af")
    return _Rhythm(rr, btype, tpl, False, rng.uniform(0.0, rr[0]))


def _other(rng: np.random.Generator, dur: float, tpl: dict, tags: list[str]) -> _Rhythm:
    """Other rhythm: one or two of _O_SUBTYPES in one record."""
    n_sub = 1 if rng.random() < 0.7 else 2
    subs = list(rng.choice(len(_O_SUBTYPES), size=n_sub, replace=False,
                           p=_O_WEIGHTS / _O_WEIGHTS.sum()))
    names = [_O_SUBTYPES[i] for i in subs]
    if "brady" in names and "tachy" in names:
        names.remove("tachy")
    tags.extend(names)

    hr = None
    if "brady" in names:
        hr = rng.uniform(38.0, 55.0)
    elif "tachy" in names:
        hr = rng.uniform(102.0, 150.0)
    pr = rng.uniform(0.23, 0.36) if "avb1" in names else None
    if "bbb" in names:
        # Right-bundle-branch-like rSR': wider R, an R' and a broad S; QRS ~ 130-160 ms.
        tpl["sd"][_R] *= rng.uniform(1.2, 1.6)
        tpl["amp"][_R2] = tpl["amp"][_R] * rng.uniform(0.35, 0.8)
        tpl["off"][_R2] = rng.uniform(0.050, 0.065)
        tpl["sd"][_R2] = rng.uniform(0.012, 0.018)
        tpl["off"][_S] = rng.uniform(0.030, 0.040)
        tpl["sd"][_S] *= 1.3
    if "tinv" in names:
        tpl["amp"][[_TA, _TB]] *= -rng.uniform(0.5, 1.1)

    rhythm = _sinus(
        rng, dur, tpl, [], sinus_arrhythmia=rng.random() < 0.1, hr=hr, pr=pr)
    rr, btype = rhythm.rr, rhythm.btype  # modified in place below
    rr0 = float(np.median(rr))
    n_in = max(int(dur / rr0), 4)  # beats inside the record, roughly

    if "bigeminy" in names:
        # Every other beat ectopic over a stretch of the record (sometimes all of it).
        span = int(n_in * rng.uniform(0.35, 1.0))
        first = int(rng.integers(1, max(2, n_in - span + 1)))
        idx = np.arange(first, min(first + span, n_in - 1), 2)
        kind = _PVC if rng.random() < 0.8 else _PAC
        _insert_ectopics(rng, rr, btype, idx, kind)
    for name, kind in (("pvc", _PVC), ("pac", _PAC)):
        if name not in names:
            continue
        if rng.random() < 0.3:
            count = int(rng.integers(1, 3))      # hard case: one or two ectopic beats only
            tags.append(f"{name}_few")
        else:
            count = max(1, int(round(n_in * rng.uniform(0.03, 0.2))))
        # Candidates on every other beat, never next to an existing ectopic: no couplets,
        # so each ectopic keeps its own pause.
        cand = np.arange(1 + int(rng.integers(0, 2)), n_in - 1, 2)
        free = (btype[cand] == _SINUS) & (btype[cand - 1] == _SINUS) & (btype[cand + 1] == _SINUS)
        cand = cand[free]
        if len(cand):
            idx = np.sort(rng.choice(cand, size=min(count, len(cand)), replace=False))
            _insert_ectopics(rng, rr, btype, idx, kind)
    return rhythm


def _insert_ectopics(rng: np.random.Generator, rr: np.ndarray, btype: np.ndarray,
                     idx: np.ndarray, kind: int) -> None:
    """Make beats `idx` premature; rr[k] is the interval that precedes beat k."""
    if len(idx) == 0:
        return
    coupling = rng.uniform(0.52, 0.78) + rng.uniform(-0.03, 0.03, size=len(idx))
    base = rr[idx].copy()
    rr[idx] = coupling * base
    if kind == _PVC:
        # Full compensatory pause: the sinus node is undisturbed, so the two intervals around
        # the PVC add up to two normal ones.
        rr[idx + 1] += (1.0 - coupling) * base
    else:
        # A PAC resets the sinus node: the pause after it is about one normal interval.
        rr[idx + 1] *= rng.uniform(1.0, 1.15, size=len(idx))
    btype[idx] = kind


# --------------------------------------------------------------------------------------------
# Rendering


def _render(rng: np.random.Generator, n: int, dur: float, rhythm: _Rhythm) -> np.ndarray:
    """Sum of Gaussian waves of every beat, evaluated only near each wave (bincount)."""
    rr, btype, tpl = rhythm.rr, rhythm.btype, rhythm.tpl
    # Beat 0 falls before the record starts (its T wave may show), beat 1 at t_start >= 0.
    t_r = rhythm.t_start + np.cumsum(rr) - rr[0] - rr[1]
    keep = t_r < dur + 0.45  # a beat just past the end still shows its P wave
    t_r, rr, btype = t_r[keep], rr[keep], btype[keep]
    k = len(t_r)

    off = np.broadcast_to(tpl["off"], (k, _NCOMP)).copy()
    amp = np.broadcast_to(tpl["amp"], (k, _NCOMP)).copy()
    sd = np.broadcast_to(tpl["sd"], (k, _NCOMP)).copy()

    off[:, _P] = -tpl["pr"]
    # QT follows the preceding RR interval (Fridericia); the T peak sits ~120 ms before T end.
    t_peak = tpl["qtc"] * np.cbrt(np.clip(rr, 0.3, 2.0)) - 0.12
    off[:, _TA] = t_peak - 0.025
    off[:, _TB] = t_peak + 0.015
    # Beat-to-beat variability: small amplitude/timing jitter, R amplitude follows breathing.
    amp *= 1.0 + 0.04 * rng.standard_normal((k, _NCOMP))
    amp[:, _R] *= 1.0 + tpl["resp_amp"] * np.sin(2 * np.pi * tpl["resp_f"] * t_r
                                                 + rng.uniform(0, 2 * np.pi))
    off += 0.002 * rng.standard_normal((k, _NCOMP))
    if not rhythm.p_present:
        amp[:, _P] = 0.0

    pvc = btype == _PVC
    if pvc.any():
        # Ventricular origin: no P, wide and tall (often opposite-polarity) QRS, and a broad T of
        # the opposite sign to the QRS (secondary repolarisation change).
        r0 = tpl["amp"][_R]
        sign = -1.0 if rng.random() < 0.4 else 1.0
        m = int(pvc.sum())
        amp[pvc, _P] = 0.0
        amp[pvc, _Q] = 0.0
        amp[pvc, _R] = sign * r0 * rng.uniform(1.0, 1.7) * (1 + 0.05 * rng.standard_normal(m))
        sd[pvc, _R] = rng.uniform(0.022, 0.034)
        off[pvc, _R2] = rng.uniform(0.045, 0.065)
        amp[pvc, _R2] = amp[pvc, _R] * rng.uniform(0.2, 0.5)
        sd[pvc, _R2] = rng.uniform(0.02, 0.03)
        off[pvc, _S] = rng.uniform(0.07, 0.09)
        amp[pvc, _S] = -amp[pvc, _R] * rng.uniform(0.2, 0.5)
        sd[pvc, _S] = rng.uniform(0.02, 0.03)
        off[pvc, _TA] = rng.uniform(0.28, 0.34)
        amp[pvc, _TA] = -amp[pvc, _R] * rng.uniform(0.3, 0.55)
        sd[pvc, _TA] = rng.uniform(0.05, 0.07)
        amp[pvc, _TB] = 0.0
    pac = btype == _PAC
    if pac.any():
        # Ectopic atrial focus: a P wave of another shape/polarity and PR; the QRS is normal.
        amp[pac, _P] = tpl["amp"][_P] * rng.uniform(-0.8, 0.6)
        off[pac, _P] = -tpl["pr"] + rng.uniform(-0.03, 0.03)

    centre = (t_r[:, None] + off) * FS            # samples
    width = sd * FS
    live = amp != 0.0
    centre, width, a = centre[live], width[live], amp[live]
    out = np.zeros(n)
    # Each Gaussian is evaluated near its centre only; narrow (QRS), medium (P) and broad (T,
    # ectopic) waves get their own window so the many narrow ones do not pay for the broad.
    # +-3.5 widths: the tail left out is below the 1 uV quantisation step.
    group = np.digitize(width, (4.5, 10.0))
    for g in range(3):
        sel = group == g
        if not sel.any():
            continue
        c, w = centre[sel], width[sel]
        half = int(np.ceil(3.5 * w.max()))
        idx = np.rint(c).astype(np.int64)[:, None] + np.arange(-half, half + 1)
        z = (idx - c[:, None]) / w[:, None]
        vals = a[sel][:, None] * np.exp(-0.5 * z * z)
        inside = (idx >= 0) & (idx < n)
        out += np.bincount(idx[inside], weights=vals[inside], minlength=n)
    return out


# --------------------------------------------------------------------------------------------
# Atrial activity and noise


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


def _fibrillatory_waves(rng: np.random.Generator, n: int, tags: list[str]) -> np.ndarray:
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


def _baseline_and_measurement_noise(rng: np.random.Generator, n: int) -> np.ndarray:
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


def _heavy_artefacts(rng: np.random.Generator, ecg: np.ndarray, tags: list[str]) -> np.ndarray:
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


def _mild_artefact(rng: np.random.Generator, ecg: np.ndarray) -> np.ndarray:
    """A short motion burst or a little EMG on an otherwise readable record."""
    n = len(ecg)
    if rng.random() < 0.5:
        env = _bursts(rng, n, int(rng.integers(1, 3)), 0.5, 3.0)
        return ecg + rng.uniform(0.15, 0.6) * env * _band_noise(rng, n, 0.5, 8.0)
    return ecg + rng.uniform(0.02, 0.08) * _band_noise(rng, n, 20.0, 140.0)
