"""The embedded synthetic data source: realistic single-lead ECG at 300 Hz, no download.

This module owns `generate(n_records, seed)`, which returns a labelled `Records` set in the style
of the PhysioNet/CinC 2017 challenge (classes N normal sinus rhythm, A atrial fibrillation,
O other rhythm, ~ too noisy; 9 to 60 s, most exactly 30 s; millivolts). It exists so that every
part of the pipeline (loading, splitting, transforms, training, the search) can run and be
tested on a machine without the real data, and so that a model's score on it means something:
the classes differ by the physiology a real classifier must learn, not by a shortcut.

How a record is made (all vectorised numpy, one child seed per record): its rhythm and beats
(data/synthetic_beats.py: sums of Gaussian waves on an RR-interval series), then atrial activity,
noise and artefacts (data/synthetic_noise.py); this module chooses the class, the duration and
which of those a record gets. Hard cases on purpose, so that a good model does not reach
100 %: sinus arrhythmia in N, AF with fairly regular RR or with artefacts, O with only one or
two ectopic beats, clean-ish segments in noisy records, a few inverted (reversed-lead) records
in every class.

Determinism: the same (n_records, seed) gives identical arrays. Record i is drawn from its own
child seed (SeedSequence(seed, spawn_key=(i,))), label included, so it does not depend on
n_records unless the small-set fix-up (every class gets at least MIN_PER_CLASS records)
had to relabel it.
"""

from __future__ import annotations

import numpy as np

from ecg_tune.data.records import Records
from ecg_tune.data.synthetic_beats import FS, af_rhythm, beat_template, other_rhythm, render, sinus_rhythm
from ecg_tune.data.synthetic_noise import (
    baseline_and_measurement_noise,
    fibrillatory_waves,
    heavy_artefacts,
    mild_artefact,
)
from ecg_tune.errors import DataError

__all__ = ["CLASSES", "CLASS_PROBS", "FS", "MIN_PER_CLASS", "MIN_RECORDS", "generate"]

CLASSES = ["N", "A", "O", "~"]

# CinC 2017 is N 59 %, A 9 %, O 29 %, ~ 3 %; less extreme here so small sets hold every class.
CLASS_PROBS = np.array([0.50, 0.15, 0.25, 0.10])
# Every class needs a few records (a stratified split needs >= 2 per class), hence the minimum.
MIN_PER_CLASS = 2
MIN_RECORDS = MIN_PER_CLASS * len(CLASSES)  # 8

_N, _A, _O, _NOISY = 0, 1, 2, 3


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
    tpl = beat_template(rng)
    tags: list[str] = []

    if label == _N:
        rhythm = sinus_rhythm(rng, dur, tpl, tags, sinus_arrhythmia=rng.random() < 0.15)
    elif label == _A:
        rhythm = af_rhythm(rng, dur, tpl, tags)
    elif label == _O:
        rhythm = other_rhythm(rng, dur, tpl, tags)
    else:
        # A noisy record still holds some rhythm underneath (mostly sinus, as in CinC).
        r = rng.random()
        if r < 0.7:
            rhythm = sinus_rhythm(rng, dur, tpl, tags, sinus_arrhythmia=False)
        elif r < 0.85:
            rhythm = af_rhythm(rng, dur, tpl, tags)
        else:
            rhythm = other_rhythm(rng, dur, tpl, tags)
    ecg = render(rng, n, dur, rhythm)

    if label == _A:
        ecg += fibrillatory_waves(rng, n, tags)
    if label == _NOISY and tags and tags[0] == "af":
        ecg += fibrillatory_waves(rng, n, [])

    ecg += baseline_and_measurement_noise(rng, n)

    if label == _NOISY:
        ecg = heavy_artefacts(rng, ecg, tags)
    elif rng.random() < 0.12:
        # Hard case: some records of the rhythm classes carry a mild artefact too, so that
        # "any artefact at all" does not identify the noisy class.
        ecg = mild_artefact(rng, ecg)
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
