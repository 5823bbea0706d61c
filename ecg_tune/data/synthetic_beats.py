"""The synthetic ECG's heart: beat shapes, rhythms and the clean waveform, at 300 Hz (FS).

This module owns what data/synthetic.py (the data set: classes, labels, the recipe of a record,
`Records`) asks of the heart: a record's beat morphology (`beat_template`), its RR-interval
series and beat types for sinus rhythm, atrial fibrillation and the "other" rhythms
(`sinus_rhythm`, `af_rhythm`, `other_rhythm`, each a `Rhythm`), and the noise-free ECG they
make (`render`). Everything draws from the record's own numpy generator, in a fixed order.

Beats: each beat is a sum of Gaussians (P, Q, R, R', S and a two-Gaussian asymmetric T)
placed around its R time, in the spirit of McSharry et al.'s ECGSYN (written here from the
idea, not from their code). Amplitudes, widths, PR interval and QTc vary per record; the QT
interval follows the preceding RR interval (Fridericia), amplitudes jitter per beat and the R
amplitude follows respiration.

Rhythm: an RR-interval series. Sinus rhythm has heart rate variability (a respiratory and a
low-frequency component plus jitter and a slow drift); AF draws RR intervals independently
(irregularly irregular), removes P waves and adds a 4-9 Hz fibrillatory baseline; "other"
mixes ectopic beats (PVCs with wide QRS and a compensatory pause, PACs with an abnormal P and
a reset), bigeminy, sinus brady-/tachycardia, first-degree AV block, bundle branch block
and T-wave inversion.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["FS", "Rhythm", "af_rhythm", "beat_template", "other_rhythm", "render", "sinus_rhythm"]

FS = 300.0

# Wave components of one beat, in column order.
_P, _Q, _R, _R2, _S, _TA, _TB = range(7)
_NCOMP = 7
_SINUS, _PVC, _PAC = 0, 1, 2

# Subtypes of "other rhythm" and how often each is picked (a record takes one or two).
_O_SUBTYPES = ("pvc", "pac", "bigeminy", "brady", "tachy", "avb1", "bbb", "tinv")
_O_WEIGHTS = np.array([0.26, 0.17, 0.09, 0.10, 0.11, 0.10, 0.09, 0.08])


def beat_template(rng: np.random.Generator) -> dict:
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


class Rhythm(NamedTuple):
    """What render needs: RR intervals (rr[k] precedes beat k), beat types (_SINUS, _PVC,
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


def sinus_rhythm(rng: np.random.Generator, dur: float, tpl: dict, tags: list[str],
           sinus_arrhythmia: bool, hr: float | None = None, pr: float | None = None) -> Rhythm:
    """Sinus rhythm with P waves (rate and PR interval may be forced by other_rhythm)."""
    hr = float(np.clip(rng.normal(74.0, 10.0), 56.0, 98.0)) if hr is None else hr
    rr = _sinus_rr(rng, dur, hr, sinus_arrhythmia, tpl["resp_f"])
    if sinus_arrhythmia:
        tags.append("sinus_arrhythmia")
    if pr is not None:
        tpl["pr"] = pr
    btype = np.zeros(len(rr), dtype=np.int8)
    return Rhythm(rr, btype, tpl, True, rng.uniform(0.0, rr[0]))


def af_rhythm(rng: np.random.Generator, dur: float, tpl: dict, tags: list[str]) -> Rhythm:
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
    return Rhythm(rr, btype, tpl, False, rng.uniform(0.0, rr[0]))


def other_rhythm(rng: np.random.Generator, dur: float, tpl: dict, tags: list[str]) -> Rhythm:
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

    rhythm = sinus_rhythm(
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


def render(rng: np.random.Generator, n: int, dur: float, rhythm: Rhythm) -> np.ndarray:
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
