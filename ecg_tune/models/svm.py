"""The SVM stage of `cnn_svm`: an RBF SVC fitted on a trained network's features.

`SVMStage` is cnn_svm's `FittedHead` (models/head.py): fitted after every epoch on the
extractor's features of (a stratified subsample of) the training records, kept apart from the
network (`svm.skops` in a bundle), its probabilities replacing the network head's.

`SVMStage.pipeline` is a plain scikit-learn Pipeline (StandardScaler + SVC), the pair that
skops saves and loads with no untrusted types. Class probabilities come from temperature
scaling of the SVC's decision function, with the temperature (one float, `temperature_`)
fitted on out-of-fold decision values. Why not the alternatives:

- `SVC(probability=True)` is deprecated in scikit-learn 1.9 (removal in 1.11).
- `CalibratedClassifierCV(SVC(), ensemble=False)`, the replacement scikit-learn points to,
  gives the same calibration (method="temperature") at the same cost, but its fitted
  internals (`_CalibratedClassifier`, `_TemperatureScaling`) are untrusted types for skops,
  so loading a saved model would need private scikit-learn names listed as trusted.
- A softmax of the raw decision function (one fit, 3-4x cheaper) is badly calibrated:
  the one-vs-rest scores are vote counts, and the resulting probabilities are far too flat
  (log loss 0.32 against 0.03 calibrated on well-separated toy features).

Temperature scaling never changes the argmax, so `predict` agrees with the SVC's own
decision function. Probability columns always cover labels 0..n_classes-1; a class missing
from the fit gets a zero column.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field
from scipy.special import softmax
from sklearn.base import clone
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ecg_tune.models.calibrate import fit_temperature
from ecg_tune.models.head import HeadFit, stratified_subsample
from ecg_tune.registry import PartOptions

__all__ = ["SVMOptions", "SVMStage"]


class SVMOptions(PartOptions):
    """The config keys of the SVM stage (read by the models that use one, e.g. cnn_svm)."""

    svm_c: float = Field(1.0, gt=0)
    svm_gamma: float | Literal["scale", "auto"] = "scale"
    # Training records the SVM is fitted on per epoch (stratified subsample when more).
    svm_max_train: int = Field(3000, ge=1)
    record_caps: ClassVar[tuple[str, ...]] = ("svm_max_train",)  # the refit: every record


class SVMStage:
    """Standardised features -> RBF SVC, with temperature-scaled class probabilities.

    Args:
        C, gamma: the SVC's (the seed used C=1, gamma="scale").
        max_train: fit on a stratified subsample of this many rows when given more, so that
            a fit per epoch stays cheap (SVC training grows about quadratically with rows).
        seed: for the subsample and the calibration folds.
        calibration_folds: folds for the out-of-fold decision values the temperature is
            fitted on (3 costs about half of 5 for the same log loss here); 0 or 1 skips
            calibration (temperature 1, a single SVC fit).
        max_records: the training loop fits the stage on the windows of at most this many
            training records (`FittedHead.max_records`); a training-time setting, not saved
            (a loaded stage only predicts).

    Attributes after `fit`: `pipeline` (StandardScaler + SVC, or + DummyClassifier when the
    fit data hold a single class), `temperature_`, `n_classes_`, `classes_` (labels present
    in the fit), `train_index_` (rows of the given features actually used).
    """

    # The FittedHead contract (models/head.py).
    name = "SVM stage"
    fit_when = HeadFit.EVERY_EPOCH
    file = "svm.skops"

    def __init__(self, C: float = 1.0, gamma: float | str = "scale", max_train: int = 3000,
                 seed: int = 0, calibration_folds: int = 3, max_records: int | None = None) -> None:
        if max_train < 2:
            raise ValueError(f"max_train must be at least 2, got {max_train}")
        self.C = C
        self.gamma = gamma
        self.max_train = max_train
        self.seed = seed
        self.calibration_folds = calibration_folds
        self.max_records = max_records
        self.pipeline: Pipeline | None = None
        self.temperature_: float = 1.0
        self.n_classes_: int = 0
        self.classes_: np.ndarray = np.array([], dtype=np.int64)
        self.train_index_: np.ndarray = np.array([], dtype=np.int64)

    @classmethod
    def from_options(cls, options: SVMOptions) -> SVMStage:
        """The stage a model with these options fits in training: on at most `svm_max_train`
        records, every window of them a row, at most twice as many rows (the stage's own cap
        keeps the fit bounded when records are long)."""
        return cls(C=options.svm_c, gamma=options.svm_gamma, max_train=2 * options.svm_max_train,
                   max_records=options.svm_max_train)

    def _new_pipeline(self) -> Pipeline:
        return Pipeline([("scale", StandardScaler()),
                         ("svc", SVC(C=self.C, gamma=self.gamma, kernel="rbf"))])

    def fit(self, features: np.ndarray, labels: np.ndarray, *, n_classes: int | None = None,
            weights: np.ndarray | None = None, seed: int | None = None) -> SVMStage:
        """Fit on features (n, F) and integer labels (n,) in 0..n_classes-1.

        `n_classes` defaults to max(label) + 1; pass it so that a class absent from these
        labels still gets its (zero) probability column. `weights` are not used: the SVC is
        fitted unweighted, as cnn_svm's always was (class_weighting weights the extractor's
        loss). `seed`, when given, replaces the constructor's.
        """
        if seed is not None:
            self.seed = seed
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(labels).astype(np.int64, copy=False)
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise ValueError(f"need features (n, F) and labels (n,), got {x.shape} and {y.shape}")
        if y.min() < 0:
            raise ValueError("labels must be non-negative class indices")
        self.n_classes_ = int(n_classes) if n_classes is not None else int(y.max()) + 1
        if y.max() >= self.n_classes_:
            raise ValueError(f"label {int(y.max())} out of range for n_classes={self.n_classes_}")
        self.train_index_ = stratified_subsample(y, self.max_train, self.seed,
                                                 min_per_class=max(self.calibration_folds, 1))
        x, y = x[self.train_index_], y[self.train_index_]
        self.classes_ = np.unique(y)
        self.temperature_ = 1.0
        if len(self.classes_) < 2:
            # An SVC needs two classes; a constant answer is the only honest model here.
            self.pipeline = Pipeline([("scale", StandardScaler()),
                                      ("svc", DummyClassifier(strategy="prior"))]).fit(x, y)
            return self
        self.pipeline = self._new_pipeline().fit(x, y)
        folds = min(self.calibration_folds, int(np.bincount(y)[self.classes_].min()))
        if folds >= 2:
            self.temperature_ = self._fit_temperature(x, y, folds)
        return self

    def _fit_temperature(self, x: np.ndarray, y: np.ndarray, folds: int) -> float:
        # Out-of-fold scores: scores of the rows the SVC was trained on are overconfident.
        scores = np.zeros((len(y), len(self.classes_)))
        splitter = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        for train, test in splitter.split(x, y):
            model = clone(self.pipeline).fit(x[train], y[train])
            scores[test] = _logits(model.decision_function(x[test]))
        return fit_temperature(scores, np.searchsorted(self.classes_, y))

    def summary(self) -> dict[str, float]:
        """Nothing beyond the validation metrics it is scored by."""
        return {}

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(n, n_classes) probabilities, column j for label j; absent classes get zeros."""
        if self.pipeline is None:
            raise RuntimeError("SVMStage.predict_proba called before fit")
        x = np.asarray(features, dtype=np.float64)
        if len(self.classes_) < 2:
            present = self.pipeline.predict_proba(x)
        else:
            present = softmax(_logits(self.pipeline.decision_function(x)) / self.temperature_,
                              axis=1)
        proba = np.zeros((len(x), self.n_classes_))
        proba[:, self.classes_] = present
        return proba

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n,) predicted labels: the most probable class."""
        return self.predict_proba(features).argmax(axis=1)

    def to_bytes(self) -> bytes:
        """The fitted stage as skops bytes: loading them runs no arbitrary code."""
        import skops.io as sio

        if self.pipeline is None:
            raise RuntimeError("SVMStage.to_bytes called before fit")
        return sio.dumps({
            "pipeline": self.pipeline,
            "temperature": float(self.temperature_),
            "n_classes": int(self.n_classes_),
            "classes": [int(c) for c in self.classes_],
            "params": {"C": self.C, "gamma": self.gamma, "max_train": self.max_train,
                       "seed": self.seed, "calibration_folds": self.calibration_folds},
        })

    def load_bytes(self, blob: bytes) -> SVMStage:
        """The stage in `blob` (a new one, with the parameters it was saved with)."""
        return type(self).from_bytes(blob)

    @classmethod
    def from_bytes(cls, blob: bytes) -> SVMStage:
        """Load `to_bytes` output, refusing any type skops does not trust by default.

        Raises ValueError with a one-line reason for bytes that are not such output: damaged,
        holding untrusted types, or holding something other than a fitted stage.
        """
        import skops.io as sio

        if not blob:
            raise ValueError("empty file (not a skops file)")
        try:
            untrusted = sio.get_untrusted_types(data=blob)
        except Exception as exc:  # zipfile, json and skops raise many types for damaged bytes
            raise ValueError(f"not a skops file, or a damaged one ({type(exc).__name__}: {exc})") from None
        if untrusted:
            raise ValueError(f"refusing to load an SVM stage with untrusted types: {', '.join(untrusted)}")
        try:
            state = sio.loads(blob, trusted=None)  # None: skops' default trusted types only
        except Exception as exc:  # a damaged member of an intact archive
            raise ValueError(f"a damaged skops file ({type(exc).__name__}: {exc})") from None
        return cls._from_state(state)

    @classmethod
    def _from_state(cls, state: object) -> SVMStage:
        """A stage from the mapping `to_bytes` saves, checked so that a hand-made one fails here,
        in one line, rather than at its first prediction."""
        keys = {"pipeline", "temperature", "n_classes", "classes", "params"}
        if not isinstance(state, dict) or set(state) != keys:
            found = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not an SVM stage (expected the keys {', '.join(sorted(keys))}; found {found})")
        pipeline, temperature, n_classes, classes = (state[k] for k in ("pipeline", "temperature", "n_classes",
                                                                         "classes"))
        if not (isinstance(pipeline, Pipeline) and hasattr(pipeline, "n_features_in_")
                and hasattr(pipeline[-1], "classes_")):
            raise ValueError(f"not an SVM stage (its pipeline is a {type(pipeline).__name__}, not a fitted Pipeline)")
        if not (isinstance(temperature, float) and np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        whole = isinstance(n_classes, int) and not isinstance(n_classes, bool)
        if not (whole and isinstance(classes, list) and all(type(c) is int for c in classes)
                and classes == sorted(set(classes)) and all(0 <= c < n_classes for c in classes)
                and np.array_equal(np.asarray(pipeline[-1].classes_), classes)):
            raise ValueError(f"classes {classes!r} of n_classes {n_classes!r} do not match its fitted pipeline")
        params = state["params"]
        try:
            stage = cls(**params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params: {exc}") from None
        stage.pipeline = pipeline
        stage.temperature_ = temperature
        stage.n_classes_ = n_classes
        stage.classes_ = np.array(classes, dtype=np.int64)
        return stage


def _logits(decision: np.ndarray) -> np.ndarray:
    """SVC decision values as one score per present class.

    Binary SVCs give one value (positive = second class): [0, d] makes softmax a sigmoid of d.
    """
    if decision.ndim == 1:
        return np.stack([np.zeros_like(decision), decision], axis=1)
    return decision
