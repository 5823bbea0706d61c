"""The classifier networks: every trainable model, registered in `MODELS` by name.

This package owns the models (one module per family), the heads some of them fit rather than
train (models/head.py: the `FittedHead` contract; svm.py: cnn_svm's SVM stage; ridge.py:
minirocket's ridge head) and temperature scaling (calibrate.py). What a model is (`EcgModel`),
the registry and `build_model` live in models/base.py and are re-exported here; importing the
package imports every model module, which registers its models. Adding a model is one module
plus one name in the import below.
"""

from __future__ import annotations

from ecg_tune.models import ecg_cnn, minirocket, resnet1d, simple_cnn  # noqa: F401  (they register themselves)
from ecg_tune.models.base import MODELS, EcgModel, WidthOptions, build_model, model_names

__all__ = ["EcgModel", "MODELS", "WidthOptions", "build_model", "model_names"]
