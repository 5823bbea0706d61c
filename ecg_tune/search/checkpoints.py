"""How many checkpoints a search keeps of each trial, and for how long: the driver's time against
the disk.

Tune keeps `CheckpointConfig.num_to_keep` checkpoints of every trial, and whenever a trial has
checkpointed that many times since Tune last saved the experiment's state, it saves that state at
once, so that a saved state never names a deleted checkpoint (ray-project/ray#31613). The state
holds every trial of the search (about 30 kB each here: its last result and Tune's running
statistics of every number it reports), so with one checkpoint kept, every epoch of every trial
rewrote the whole experiment: in a 7-minute ECG5000 search, where ASHA stops most trials after two
epochs of a fraction of a second, the driver used 0.9 of a core and 466 trials ran; keeping 3 of
a running trial, the same search ran 812 (docs/benchmarks.md, "Tune's experiment state").

So a running trial keeps 3 checkpoints (`--keep-checkpoints`, SearchOptions), which also leaves an
older one to fall back on when the newest is unreadable (search/trainable.py), and
`KeepNewestOfEnded` deletes, as a trial ends, its checkpoints older than the newest one Tune
registered: that one holds the trial's state and the predictions of the epoch it is ranked by
(search/export.py reads them there), and an ended trial is never run again. The disk then holds
about one checkpoint per ended trial, as when one was kept.

What this costs: if the search is killed within seconds of a trial's end, before Tune saved its
state again, `--resume` finds that trial running at a checkpoint deleted here and trains it again
from its first epoch (saying so). Time, not results.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any

from ray.tune import Callback

from ecg_tune.storage import CHECKPOINT_NAME, checkpoint_folders

logger = logging.getLogger(__name__)


class KeepNewestOfEnded(Callback):
    """As each trial ends (completed, stopped by the scheduler or by the search's end; not
    errored: Tune may retry those from an older checkpoint), delete its older checkpoints."""

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        delete_older_checkpoints(getattr(trial, "checkpoint", None))


def delete_older_checkpoints(checkpoint: Any) -> int:
    """Delete the checkpoint folders beside the Tune `checkpoint` whose index is lower than its
    own; returns how many. A storage that refuses costs disk, not the search: it is logged."""
    if checkpoint is None or checkpoint.filesystem is None:
        return 0
    path = PurePosixPath(checkpoint.path)
    own = CHECKPOINT_NAME.fullmatch(path.name)
    if own is None:
        return 0
    deleted = 0
    try:
        for index, older in checkpoint_folders(checkpoint.filesystem, str(path.parent)):
            if index < int(own[1]):
                checkpoint.filesystem.delete_dir(older)
                deleted += 1
    except OSError as exc:
        logger.warning("could not delete older checkpoints of %s: %s", path.parent, exc)
    return deleted
