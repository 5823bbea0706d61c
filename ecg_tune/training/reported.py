"""The one table of the keys a trial reports (being built: see issue 23)."""

from __future__ import annotations

# Tune's count of a trial's reports; the trainable reports each epoch's result with its epoch as
# this value, so it is the trial's epoch everywhere (ASHA's clock, the histories, the exports).
TRAINING_ITERATION = "training_iteration"
