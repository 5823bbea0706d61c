"""The Tune function trainable: one trial = the core training loop on one sampled config.

The dataset reaches every trial through Ray's object store (`tune.with_parameters`), once for the
whole search; the trial builds its config, resumes from `tune.get_checkpoint()` when Tune restarts
it, and reports every epoch's validation metrics with a checkpoint of the loop's state. Under
cross-validation the trial trains its folds in lockstep (training/folds.py) and reports their
means; the checkpoint then holds every fold's state.

Every checkpoint also holds the trial's validation predictions at its best epoch so far for the
search's ranking metric (`PREDICTIONS_FILE`: the first of equal bests, in the metric's direction,
as the export's `best_index` picks; under cross-validation the folds' out-of-fold probabilities).
So the trial's latest checkpoint, on the experiment's storage where the driver can read it
whatever node ran the trial, has the predictions of the epoch trials.csv ranks it by, whether it
ran out its epochs, stopped early or was stopped by ASHA; search/export.py copies them into the
run folder. A resumed trial carries on from the restored checkpoint's.

A checkpoint that cannot be read (truncated, corrupt, its state file missing) must not cost the
trial: Tune would restore the same checkpoint on every retry and the trial would end errored.
The trial warns, naming it (in the worker's log and in `restore_warnings.txt` in the trial's
folder), then resumes from the newest older checkpoint Tune still keeps (`--keep-checkpoints`
above 1), else starts again from epoch 1. Each result carries its epoch as `training_iteration`
so ASHA's rungs, Optuna's steps and the exported best epoch stay the loop's epochs after such a
step back (Tune's own counter would continue from the lost checkpoint's epoch).

Every result also carries the trial's device costs (training/costs.py): `n_params`, `macs`,
`latency_ms`, measured once at the first epoch (after any fitted head's first fit) on the trial's
worker, a kept-apart head's size updated as it is refitted, and `feasible` against the search's
limits (`limits`: 0.0 for a trial above `--max-latency-ms`, or whose SVM stage takes it above
`--max-params`). Under cross-validation they are added once, after the folds' results are
combined (fold 0's network; the heads' sizes averaged). The checkpoint keeps the measurement
(`COSTS_KEY`), so a resumed trial reports the same figures.

A trial on a GPU share that runs out of CUDA memory ends with one line (`OutOfGpuMemory`: its
model, input length and batch size, its share, what to change) instead of torch's traceback; the
search goes on (`out_of_memory_as_failure`). The trial's device and memory cap are
training/device.py's.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from ray import tune

from ecg_tune.config import TrainConfig, make_config
from ecg_tune.data.tensors import TensorData
from ecg_tune.errors import OutOfGpuMemory
from ecg_tune.runs import TrialPredictions
from ecg_tune.storage import CHECKPOINT_NAME, checkpoint_folders
from ecg_tune.training.costs import CostLimits, TrialCosts
from ecg_tune.training.device import out_of_memory_as_error
from ecg_tune.training.folds import Fold, FoldsEpoch, fit_folds
from ecg_tune.training.metrics import better, ranking_metric
from ecg_tune.training.reported import TRAINING_ITERATION

STATE_FILE = "state.pt"
COSTS_KEY = "costs"  # in STATE_FILE beside the loop's state: `TrialCosts.state()`
PREDICTIONS_FILE = "predictions.parquet"  # in every checkpoint: `BestPredictions.content`
WARNINGS_FILE = "restore_warnings.txt"  # in the trial's folder, beside Tune's error.txt
# A grid space's trials carry their whole point under this key (see search/tuner.py).
GRID_KEY = "grid_point"
# The Parquet schema metadata key of PREDICTIONS_FILE that names the metric and its value at the
# saved epoch (what a resumed trial compares its next epochs with).
_RANKED_KEY = b"ecg_tune.ranked"
# In the trial's working folder on its node: the line of the trial's CUDA out-of-memory, which a
# retry of the trial there fails with at once (see `out_of_memory_as_failure`).
OOM_MARK = "cuda_out_of_memory.txt"

logger = logging.getLogger(__name__)


def sampled_values(config: dict) -> dict:
    """The values a trial's config holds for the space's parameters."""
    return dict(config[GRID_KEY]) if GRID_KEY in config else dict(config)


def trial_config(config: dict, max_epochs: int, seed: int) -> dict:
    """The full config a trial trains: the sampled values plus the search's epochs and seed."""
    return {**sampled_values(config), "epochs": max_epochs, "seed": seed}


def train_trial(config: dict, data: TensorData, folds: Sequence[Fold], max_epochs: int, seed: int,
                metric: str | None = None, limits: CostLimits | None = None) -> None:
    """Tune function trainable (bind data, folds, the metric and the limits with
    `tune.with_parameters`); `folds`: the (train, val) index pairs of `Validation.folds`, one pair
    for the split's own parts; `metric`: the search's ranking metric, whose best epoch's
    predictions every checkpoint keeps (None: the data's default, `ranking_metric`); `limits`:
    the search's cost limits, which `feasible` reports against (None: none)."""
    train_config = make_config(trial_config(config, max_epochs, seed), where="trial config")
    metric = metric or ranking_metric(data.classes)
    with out_of_memory_as_failure(train_config):
        resume, best = restore_state(tune.get_checkpoint(), len(folds), metric)
        costs = TrialCosts.from_state((resume or {}).get(COSTS_KEY))
        for result in fit_folds(train_config, data, folds, resume=resume):
            best = BestPredictions.keep(best, metric, result, data)
            if costs is None:  # once per trial: at its first epoch, any head fitted by then
                costs = TrialCosts.measure(result.folds[0].network, result.folds[0].head, train_config)
            metrics = {**result.metrics, **costs.figures([fold.head for fold in result.folds], limits)}
            with tempfile.TemporaryDirectory() as folder:
                torch.save({**result.state(), COSTS_KEY: costs.state()}, Path(folder) / STATE_FILE)
                if best is not None:
                    (Path(folder) / PREDICTIONS_FILE).write_bytes(best.content)
                tune.report(report_metrics(metrics, result.epoch), checkpoint=tune.Checkpoint.from_directory(folder))


@contextmanager
def out_of_memory_as_failure(config: TrainConfig) -> Iterator[None]:
    """A CUDA out-of-memory inside as the trial's one-line failure, `OutOfGpuMemory`
    (training/device.py's `out_of_memory_as_error`), the one Tune records for it (error.txt, the
    errored trial).

    Tune retries an errored trial from its checkpoint up to FailureConfig's max_failures and has
    no public way to exempt an error from that, though the same config runs out of memory again.
    So the line is noted in the trial's working folder on its node (OOM_MARK), and a retry that
    finds it there fails with it at once, training nothing; a retry on another node (maybe with
    a larger GPU) tries again."""
    folder = _trial_folder()
    mark = None if folder is None else folder / OOM_MARK
    if mark is not None and mark.is_file():
        raise OutOfGpuMemory(mark.read_text(encoding="utf-8"))
    try:
        with out_of_memory_as_error(config):
            yield
    except OutOfGpuMemory as error:
        if mark is not None:
            try:
                mark.write_text(str(error), encoding="utf-8")
            except OSError as unwritable:  # only costs a retry that trains until the same failure
                logger.warning("could not write %s: %s", mark, unwritable)
        raise


def _trial_folder() -> Path | None:
    """The trial's working folder on its node; None outside a Tune trial (one driven directly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Tune warns that it returns None there: None is the answer
        folder = tune.get_context().get_trial_dir()
    return Path(folder) if folder else None


@dataclass(frozen=True)
class BestPredictions:
    """A trial's validation predictions at its best epoch so far for `metric`, as the bytes of
    PREDICTIONS_FILE (a `TrialPredictions` table naming no trial: the export gives it the trial's
    id; the metric and its value there in the schema metadata). Serialised once per new best and
    written as is into every checkpoint after it."""

    metric: str
    value: float
    epoch: int
    content: bytes

    @classmethod
    def keep(cls, best: BestPredictions | None, metric: str, result: FoldsEpoch,
             data: TensorData) -> BestPredictions | None:
        """`best`, or `result`'s epoch when its `metric` is strictly better (so the first of equal
        values stays, as the export's `best_index` picks; a missing or NaN value is never better)."""
        value = result.metrics.get(metric)
        if not isinstance(value, int | float) or math.isnan(value):
            return best
        if best is not None and not better(metric, float(value), best.value):
            return best
        found = result.validation_predictions()
        if found is None:
            return best
        index, probabilities = found
        predictions = TrialPredictions(trial_id="", epoch=result.epoch,
                                       record_ids=tuple(data.record_ids[i] for i in index),
                                       classes=tuple(data.classes), probabilities=probabilities.astype(np.float32))
        return cls(metric, float(value), result.epoch, _predictions_bytes(predictions, metric, float(value)))

    @classmethod
    def from_bytes(cls, content: bytes) -> BestPredictions:
        """The saved best from PREDICTIONS_FILE's content; ValueError (or pyarrow's error) when
        it is not such a file."""
        predictions, metric, value = read_predictions(content, trial_id="", where=PREDICTIONS_FILE)
        return cls(metric, value, predictions.epoch, content)


def _predictions_bytes(predictions: TrialPredictions, metric: str, value: float) -> bytes:
    """PREDICTIONS_FILE's content: the run folder's table (`TrialPredictions.to_frame`) with the
    metric and its value in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(predictions.to_frame(), preserve_index=False)
    ranked = json.dumps({"metric": metric, "value": value}).encode()
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _RANKED_KEY: ranked})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def read_predictions(content: bytes, trial_id: str, where: str) -> tuple[TrialPredictions, str, float]:
    """A checkpoint's PREDICTIONS_FILE: (the predictions, named `trial_id`; the metric they were
    ranked by; its value at their epoch). ValueError (or pyarrow's error) when it is not one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(content))
    ranked = json.loads((table.schema.metadata or {}).get(_RANKED_KEY, b"null"))
    if not isinstance(ranked, dict) or not isinstance(ranked.get("metric"), str):
        raise ValueError(f"{where}: no ranking metric in its metadata")
    predictions = TrialPredictions.from_frame(trial_id, table.to_pandas(), where=where)
    return predictions, ranked["metric"], float(ranked["value"])


def report_metrics(metrics: dict, epoch: int | None = None) -> dict:
    """Metrics as Tune stores them: numbers, with the confusion matrix as a JSON string; `epoch`
    becomes the result's training_iteration (Tune only fills it in when it is absent)."""
    reported = {key: json.dumps(value) if isinstance(value, list) else value for key, value in metrics.items()}
    if epoch is not None:
        reported[TRAINING_ITERATION] = int(epoch)
    return reported


Restored = tuple[dict[str, Any] | None, BestPredictions | None]  # (loop state, its best predictions)


def restore_state(checkpoint: tune.Checkpoint | None, n_folds: int, metric: str) -> Restored:
    """The loop state to resume from, with the best predictions saved beside it: `checkpoint`'s,
    else the newest readable older checkpoint of the same trial, else (None, None) (the trial
    starts again); every unreadable one is warned of. Predictions that are missing (a checkpoint
    written before they were kept) or unreadable, or ranked by another metric than `metric`,
    leave the state usable: the trial keeps its best from the epochs still to come."""
    if checkpoint is None:
        return None, None
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        try:
            return _load_state(candidate, n_folds, metric)
        except Exception as exc:  # anything unreadable: a truncated zip, a missing file, bad content
            _warn(checkpoint, f"checkpoint {candidate.path} is unreadable ({type(exc).__name__}: "
                              f"{_first_line(exc)})")
    _warn(checkpoint, f"no readable checkpoint left: the trial starts again from epoch 1 "
                      f"(latest was {checkpoint.path})")
    return None, None


def _load_state(checkpoint: tune.Checkpoint, n_folds: int, metric: str) -> Restored:
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / STATE_FILE, weights_only=True)
        saved = Path(folder) / PREDICTIONS_FILE
        content = saved.read_bytes() if saved.is_file() else None
    # A state that loads but is not what fit_folds wrote is as unusable as an unreadable one.
    if not isinstance(state, dict) or not isinstance(state.get("folds"), list) or len(state["folds"]) != n_folds:
        raise ValueError(f"not a {n_folds}-fold loop state")
    epochs = {fold.get("epoch") if isinstance(fold, dict) else None for fold in state["folds"]}
    if len(epochs) != 1 or not isinstance(next(iter(epochs)), int):
        raise ValueError(f"fold states at epochs {sorted(map(str, epochs))}")
    logger.info("trial resumes after epoch %s from %s", next(iter(epochs)), checkpoint.path)
    return state, None if content is None else _load_best(checkpoint, content, metric)


def _load_best(checkpoint: tune.Checkpoint, content: bytes, metric: str) -> BestPredictions | None:
    """The best predictions a checkpoint saved beside its state, or None (see `restore_state`)."""
    try:
        best = BestPredictions.from_bytes(content)
    except Exception as exc:  # the state is still good: only the predictions are lost
        _warn(checkpoint, f"checkpoint {checkpoint.path}: its predictions are unreadable ({type(exc).__name__}: "
                          f"{_first_line(exc)}); the trial keeps those of its next best epoch")
        return None
    return best if best.metric == metric else None


def _older_checkpoints(checkpoint: tune.Checkpoint) -> Iterator[tune.Checkpoint]:
    """The trial's other checkpoints with a lower index than `checkpoint`, newest first: those
    Tune keeps (CheckpointConfig.num_to_keep). A higher index is a checkpoint whose result Tune
    never registered (the worker died before the driver saw it): not used."""
    path, filesystem = PurePosixPath(checkpoint.path), checkpoint.filesystem
    current = CHECKPOINT_NAME.fullmatch(path.name)
    if current is None or filesystem is None:
        return
    try:
        siblings = checkpoint_folders(filesystem, str(path.parent))
    except Exception as exc:  # an unlistable folder only means no fallback
        logger.warning("cannot list %s for older checkpoints: %s", path.parent, exc)
        return
    for index, older_path in siblings:
        if index < int(current[1]):
            yield tune.Checkpoint(older_path, filesystem=filesystem)


def _warn(checkpoint: tune.Checkpoint, message: str) -> None:
    """Log `message` and append it to the trial folder's WARNINGS_FILE (best effort: storage
    that refuses the write must not fail the trial)."""
    logger.warning(message)
    target, filesystem = str(PurePosixPath(checkpoint.path).parent / WARNINGS_FILE), checkpoint.filesystem
    if filesystem is None:
        return
    try:
        try:
            with filesystem.open_input_stream(target) as stream:
                before = stream.read()
        except FileNotFoundError:
            before = b""
        with filesystem.open_output_stream(target) as stream:
            stream.write(before + message.encode() + b"\n")
    except Exception as exc:
        logger.warning("could not write %s: %s", target, exc)


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The start of an error's message (torch's unreadable-zip error runs to 400 characters)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else "no message"
    return line if len(line) <= limit else line[: limit - 3] + "..."
