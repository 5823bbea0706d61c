"""Tests of the embedded synthetic ECG source (ecg_tune.data.synthetic).

Checks the API contract (Records fields, determinism, argument errors), that the recordings look
like CinC 2017 (lengths, amplitudes, class mix), that the rhythm classes differ the way the
physiology says (RR regularity of N against A), and that the set is learnable but not trivial:
hand-crafted features must clearly beat a duration-only model yet stay below a perfect score.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as ss

from ecg_tune.data import synthetic
from ecg_tune.data.records import Records
from ecg_tune.data.synthetic import CLASSES, FS, MIN_RECORDS, generate
from ecg_tune.errors import DataError

_SOS_QRS = ss.butter(2, [5.0, 25.0], btype="band", fs=FS, output="sos")
_SOS_ECG = ss.butter(2, [0.5, 40.0], btype="band", fs=FS, output="sos")


@pytest.fixture(scope="module")
def rec400() -> Records:
    return generate(400, seed=0)


@pytest.fixture(scope="module")
def peaks400(rec400: Records) -> list[tuple[np.ndarray, np.ndarray]]:
    """(R peaks, QRS envelope) per record of rec400, computed once for all tests."""
    return [_r_peaks(s) for s in rec400.signals]


def _r_peaks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R peaks: maxima of the |5-25 Hz band-passed| signal (polarity-free), >= 270 ms apart."""
    env = np.abs(ss.sosfiltfilt(_SOS_QRS, x.astype(np.float64)))
    peaks, _ = ss.find_peaks(env, height=0.35 * np.percentile(env, 99), distance=int(0.27 * FS))
    return peaks, env


def _is_clean(kind: str) -> bool:
    return "noise" not in kind


# ---------------------------------------------------------------------------------------------
# API contract


def test_constants() -> None:
    assert CLASSES == ["N", "A", "O", "~"]
    assert FS == 300.0
    assert MIN_RECORDS == 8


def test_records_fields_and_dtypes(rec400: Records) -> None:
    r = rec400
    assert isinstance(r, Records)
    assert len(r) == 400
    assert r.classes == CLASSES
    assert r.fs == 300.0
    assert r.source == "synthetic:400"
    assert r.groups is None and r.split is None
    assert r.record_ids[0] == "S00001" and r.record_ids[-1] == "S00400"
    assert len(set(r.record_ids)) == 400
    assert r.labels is not None and r.labels.dtype == np.int64 and r.labels.shape == (400,)
    assert set(np.unique(r.labels)) <= set(range(len(CLASSES)))
    for s in r.signals:
        assert s.dtype == np.float32 and s.ndim == 1
        assert np.isfinite(s).all()


def test_lengths_like_cinc(rec400: Records) -> None:
    seconds = rec400.lengths / FS
    assert seconds.min() >= 9.0 and seconds.max() <= 60.0
    # Most records exactly 30 s (9000 samples), the rest spread over the range.
    frac30 = np.mean(rec400.lengths == 9000)
    assert 0.6 <= frac30 <= 0.8
    others = seconds[rec400.lengths != 9000]
    assert others.min() < 15.0 and others.max() > 45.0
    # Class means differ a little (as in CinC) but not by much.
    means = [seconds[rec400.labels == c].mean() for c in range(len(CLASSES))]
    assert max(means) - min(means) < 5.0


def test_deterministic_for_a_seed() -> None:
    a, b = generate(30, seed=11), generate(30, seed=11)
    assert np.array_equal(a.labels, b.labels)
    assert all(np.array_equal(x, y) for x, y in zip(a.signals, b.signals, strict=False))
    c = generate(30, seed=12)
    assert not all(
        len(x) == len(y) and np.array_equal(x, y) for x, y in zip(a.signals, c.signals, strict=False)
    )


def test_record_does_not_depend_on_n_records() -> None:
    small, large = generate(40, seed=3), generate(90, seed=3)
    same = [i for i in range(40) if small.labels[i] == large.labels[i]]
    # Only the small-set label fix-up may relabel a record; here it touches few if any.
    assert len(same) >= 36
    for i in same:
        assert np.array_equal(small.signals[i], large.signals[i])


@pytest.mark.parametrize("seed", range(6))
def test_every_class_present_in_the_smallest_set(seed: int) -> None:
    r = generate(MIN_RECORDS, seed=seed)
    assert all(count >= 2 for count in r.class_counts().values())


def test_class_proportions(rec400: Records) -> None:
    frac = np.bincount(rec400.labels, minlength=4) / len(rec400)
    expected = np.array([0.50, 0.15, 0.25, 0.10])
    assert np.all(np.abs(frac - expected) < 0.07), frac


@pytest.mark.parametrize(
    "n_records, seed",
    [(7, 0), (0, 0), (-5, 0), (2.5, 0), ("10", 0), (True, 0), (20, -1), (20, 1.5), (20, None)],
)
def test_bad_arguments_raise_data_error(n_records, seed) -> None:
    with pytest.raises(DataError) as info:
        generate(n_records, seed=seed)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Physiology


def test_qrs_amplitude_is_physiological(rec400: Records, peaks400) -> None:
    half = int(0.06 * FS)  # the QRS lies within +-60 ms of the R peak
    ptp = []
    for s, label, kind, (peaks, _) in zip(
        rec400.signals, rec400.labels, rec400.extra["kind"], peaks400, strict=False
    ):
        if label == CLASSES.index("~") or not _is_clean(kind):
            continue
        peaks = peaks[(peaks > half) & (peaks < len(s) - half)]
        ptp.append(np.median([np.ptp(s[p - half:p + half]) for p in peaks]))
    lo, mid, hi = np.percentile(ptp, [5, 50, 95])
    assert 0.4 <= lo and hi <= 2.6 and 0.7 <= mid <= 1.6, (lo, mid, hi)


def test_rr_regular_in_normal_irregular_in_af(rec400: Records, peaks400) -> None:
    cv: dict[int, list[float]] = {0: [], 1: []}
    for label, kind, (peaks, _) in zip(rec400.labels, rec400.extra["kind"], peaks400, strict=False):
        if int(label) in cv and _is_clean(kind):
            rr = np.diff(peaks) / FS
            cv[int(label)].append(rr.std() / rr.mean())
    n_cv, a_cv = np.median(cv[0]), np.median(cv[1])
    assert n_cv < 0.06 and a_cv > 0.12 and a_cv > 3 * n_cv, (n_cv, a_cv)
    # Physiological heart rates in normal sinus rhythm, judged from the detected beats.
    assert np.all(np.array(cv[0]) < 0.2)


def test_noisy_records_are_noisier(rec400: Records) -> None:
    # kSQI: a clean ECG is spiky (high kurtosis); noise that swamps it is closer to Gaussian.
    def kurtosis(s: np.ndarray) -> float:
        x = ss.sosfiltfilt(_SOS_ECG, s.astype(np.float64))
        x -= x.mean()
        return float(np.mean(x**4) / np.mean(x**2) ** 2 - 3.0)

    k = np.array([kurtosis(s) for s in rec400.signals])
    noisy = rec400.labels == CLASSES.index("~")
    assert np.median(k[noisy]) < 0.4 * np.median(k[~noisy])
    # Variable severity: not every noisy record is hopeless, so some overlap the clean ones.
    assert np.percentile(k[noisy], 90) > np.percentile(k[~noisy], 10)


# ---------------------------------------------------------------------------------------------
# Learnable but not trivial


def _features(s: np.ndarray, peaks: np.ndarray, env: np.ndarray) -> list[float]:
    """A few hand-crafted features: rhythm, beat shape consistency, P-wave region, spectrum."""
    x = s.astype(np.float64)
    y = ss.sosfiltfilt(_SOS_ECG, x)
    f = [len(x) / FS, len(peaks) / (len(x) / FS)]
    rr = np.diff(peaks) / FS
    if len(rr) >= 3:
        d, m = np.diff(rr), np.median(rr)
        f += [rr.mean(), rr.std() / rr.mean(), np.sqrt(np.mean(d * d)) / m,
              np.median(np.abs(d)) / m, rr.min() / m, rr.max() / m]
    else:
        f += [0.0, 1.0, 1.0, 1.0, 0.0, 5.0]
    before, after = int(0.25 * FS), int(0.4 * FS)
    inner = peaks[(peaks > before) & (peaks < len(x) - after)]
    if len(inner) >= 3:
        beats = np.stack([y[p - before:p + after] for p in inner])
        tpl = np.median(beats, axis=0)
        bc, tc = beats - beats.mean(1, keepdims=True), tpl - tpl.mean()
        corr = bc @ tc / (np.linalg.norm(bc, axis=1) * np.linalg.norm(tc) + 1e-9)
        r_amp = abs(tpl[before]) + 1e-6
        p_region = tpl[before - int(0.25 * FS):before - int(0.08 * FS)]
        widths = ss.peak_widths(env, inner, rel_height=0.5)[0] / FS
        f += [corr.min(), np.percentile(corr, 10), corr.mean(), np.ptp(p_region) / r_amp,
              np.std(beats[:, :before - int(0.08 * FS)]) / r_amp,
              np.median(widths), widths.max(), env[inner].std() / env[inner].mean()]
    else:
        f += [0.0] * 8
    psd = np.abs(np.fft.rfft(x - x.mean())) ** 2  # a plain periodogram: enough for band ratios
    freq = np.fft.rfftfreq(len(x), 1.0 / FS)
    total = psd.sum() + 1e-12
    for lo, hi in [(0, 0.5), (0.5, 3), (3, 10), (10, 20), (20, 50), (50, 150)]:
        f.append(np.log(psd[(freq >= lo) & (freq < hi)].sum() / total + 1e-9))
    f += [np.log(x.std() + 1e-6), np.abs(x).max(), np.mean(np.diff(x) == 0)]
    return f


def test_learnable_but_not_trivial(rec400: Records, peaks400) -> None:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.array([_features(s, *pe) for s, pe in zip(rec400.signals, peaks400, strict=False)])
    y = rec400.labels
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    forest = RandomForestClassifier(
        n_estimators=100, min_samples_leaf=2, class_weight="balanced", random_state=0, n_jobs=1
    )
    f1_features = f1_score(y, cross_val_predict(forest, X, y, cv=cv), average="macro")
    duration_only = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced"))
    f1_duration = f1_score(y, cross_val_predict(duration_only, X[:, :1], y, cv=cv),
                           average="macro")
    print(f"macro F1: features {f1_features:.3f}, duration only {f1_duration:.3f}")
    assert f1_duration < 0.45
    assert f1_features > f1_duration + 0.3
    assert 0.75 < f1_features < 0.98


def test_module_docstring_and_hints() -> None:
    assert synthetic.__doc__ and "synthetic" in synthetic.__doc__.lower()
    assert generate.__annotations__.get("return") in ("Records", Records)
