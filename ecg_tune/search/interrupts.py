"""Stopping a search resumably: noticing Ctrl-C / SIGUSR1, and stopping before the storage fills up.

Tune answers the first SIGINT or SIGUSR1 by saving the experiment and returning from `fit` as if
the search had ended, and its results cannot tell that apart from the end of the time budget.
`InterruptWatch` (a callback, so that it runs after Tune installed its handlers) chains a flag in
front of them, so that the pipeline neither exports nor refits a search that only paused.

A disk that fills mid-write truncates Tune's experiment and searcher state, and with a truncated
searcher state Tune's restore starts the experiment over (measured here on a small tmpfs: the
searcher's pickle was left empty, and `--resume` ran a new search in the folder). This callback
watches the free space of a local storage after every reported epoch and, when it runs low,
interrupts the search as Ctrl-C does (SIGUSR1: Tune saves the experiment one last time and
returns), so that `--resume` continues it once there is space. A URI's storage has no free-space
figure to watch.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from ray.tune import Callback

from ecg_tune.storage import ExperimentStorage

STOP_SIGNALS = ("SIGINT", "SIGUSR1")
MIN_FREE_BYTES = 256 * 2**20
CHECKPOINTS_OF_MARGIN = 4  # ... or this many of the largest checkpoint seen, whichever is more
# Process-wide: on --resume Tune runs the callbacks it unpickled from the experiment, not new ones,
# so what this run was told (--min-free-mb) must not live in them.
_interrupted = threading.Event()
_min_free = [MIN_FREE_BYTES]


def start_watching(min_free: int = MIN_FREE_BYTES) -> None:
    """Forget an earlier search's interrupt and set this run's free-space floor (call before `fit`)."""
    _interrupted.clear()
    _min_free[0] = min_free


def was_interrupted() -> bool:
    return _interrupted.is_set()


class InterruptWatch(Callback):
    """Chains the flag in front of Tune's stop-signal handlers (see the module docstring)."""

    def setup(self, stop: Any = None, num_samples: int | None = None, total_num_samples: int | None = None,
              **info: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Tune installs no handlers either then
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)
            if number is None:
                continue
            tune_handler = signal.getsignal(number)
            if callable(tune_handler):
                signal.signal(number, self._noticing(tune_handler))

    def _noticing(self, tune_handler: Any) -> Any:
        def handler(number: int, frame: Any) -> None:
            _interrupted.set()
            tune_handler(number, frame)
        return handler



class StorageGuard(Callback):
    def __init__(self, storage: ExperimentStorage) -> None:
        self.storage = storage
        self.largest_checkpoint = 0
        self.tripped = False

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, tripped=False)  # a resumed search watches afresh

    def margin(self) -> int:
        return max(_min_free[0], CHECKPOINTS_OF_MARGIN * self.largest_checkpoint)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        checkpoint = getattr(trial, "checkpoint", None)
        self.check(getattr(checkpoint, "path", None))

    def check(self, checkpoint_path: str | None) -> None:
        if self.tripped:
            return
        if checkpoint_path and os.path.isdir(checkpoint_path):
            size = sum(entry.stat().st_size for entry in os.scandir(checkpoint_path) if entry.is_file())
            self.largest_checkpoint = max(self.largest_checkpoint, size)
        free = self.storage.free_bytes()
        if free is not None and free < self.margin():
            self.tripped = True
            print(f"stopping the search: {free / 2**20:.0f} MB left on {self.storage.storage_path}, below the "
                  f"{self.margin() / 2**20:.0f} MB it keeps free for checkpoints and state; free space, then "
                  f"continue with --resume", flush=True)
            os.kill(os.getpid(), signal.SIGUSR1)


def storage_guard(storage: ExperimentStorage) -> StorageGuard | None:
    """The guard for a local storage; None for a URI."""
    return StorageGuard(storage) if storage.is_local else None
