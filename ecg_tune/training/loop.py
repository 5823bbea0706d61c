"""The one training loop, used unchanged by `ecg-tune train`, the Tune trainable, the refit and
the benchmark.

`fit()` yields one `EpochResult` per epoch: the metrics (train and validation loss, accuracy,
macro F1, CinC F1, per-class F1, confusion matrix, the learning rate used), the validation
records' class probabilities those metrics were scored on, and a `state()` that can be saved and
passed back as `resume` to continue mid-run. Batches are drawn by index from the
in-memory `TensorData`; augmentation and the input transform run batched on the training device.

Randomness is derived from (seed, epoch), so a run resumed at epoch k draws the same batches and
augmentations as the uninterrupted run would have.

An epoch's learning rate comes from the first of: the caller's `lr_schedule` (the refit replaying
a trial's rates); `lr_scheduler: cosine`, a rate derived from the epoch index alone (so a resumed
run gets the same ones), annealed from `lr` towards `lr * cosine_floor` over `epochs`; `plateau`,
ReduceLROnPlateau on val_loss; else `lr`.

With `ema_decay` > 0 the loop also keeps an exponential moving average of the model's weights and
buffers (`WeightAverage`), updated after every optimiser step, and that average is what the epoch
is validated with (its val_loss drives the plateau scheduler and early stopping), what a fitted
head is fitted on and what `EpochResult.network` is: the trial is ranked by, and the refit
delivers, the steadier averaged weights. The checkpoint keeps the raw
weights (what training continues from) and the average beside them. A model trained by no step
(an `ONLY_EPOCH` head) has nothing to average.

`precision` (training/precision.py) is resolved once, before the first epoch a run trains (auto
may time a few steps on a copy of the network: part of the first epoch's `epoch_seconds`),
reported each epoch as `bf16` (1 or 0) and kept in the checkpoint, so a resumed run keeps it; bf16
autocasts the model's forward and the loss of each training step and the validation forward;
everything else (weights, statistics, optimiser, heads and the features they are fitted on)
stays float32.

A model marked `needs_data_init` (minirocket) first fits what it takes from the data (biases,
feature scaling) on a fixed, seeded sample of training records, unless the run is resumed.

A model with a `fitted_head()` (models/head.py: a head fitted on the model's features, not
trained by gradient) has it fitted on the features of the training windows (the windows
evaluation cuts, not augmented; `class_weighting` weights the rows; at most the head's
`max_records` records, a stratified subsample per epoch), when the head says:
- `ONLY_EPOCH` (minirocket's ridge head): nothing is trained step by step; the run is one
  "epoch", that fit, and its train_loss is the head's log loss on those windows;
- `EVERY_EPOCH` (cnn_svm's SVM stage): after each epoch's gradient steps, and the epoch is
  validated with the head, so that it is ranked by what it would deliver; `LAST_EPOCH` (also what
  the refit asks of an every-epoch head): after the last epoch only.
The head's figures (`summary()`) join the epoch's metrics and its bytes the checkpoint.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from ecg_tune.config import TrainConfig
from ecg_tune.data.tensors import TensorData
from ecg_tune.errors import ConfigError
from ecg_tune.models.head import FittedHead, HeadFit, stratified_subsample
from ecg_tune.signal.augment import BatchAugmenter, build_augmenter, fit_to_length
from ecg_tune.training.device import PinnedRows, device_views, pick_device
from ecg_tune.training.evaluate import record_probabilities, window_outputs
from ecg_tune.training.metrics import classification_metrics, log_loss, macro_auroc
from ecg_tune.training.network import Network, build_network
from ecg_tune.training.precision import Precision, StepCost, autocast, decide, fast_bf16, measure
from ecg_tune.training.reported import BF16, FINISHED, EarlyStop

# Training records `initialise` sees (models with `needs_data_init`), drawn with this stream.
INIT_RECORDS = 512
_INIT_STREAM = 0x1D17
# The checkpoint key of the fitted head's bytes: named when cnn_svm's SVM stage was the only such
# head, and kept so that checkpoints written since still resume.
_HEAD_KEY = "svm"
# The checkpoint key of the weight average (`WeightAverage.state`); older checkpoints lack it.
_EMA_KEY = "ema"
# The checkpoint key of the resolved precision; a checkpoint without it ran in fp32.
_PRECISION_KEY = "precision"


@dataclass
class EpochResult:
    epoch: int  # 1-based: the number of epochs trained so far
    metrics: dict
    network: Network  # what the epoch was validated with: the weight average when one is kept
    head: FittedHead | None  # the model's fitted head, once fitted (models/head.py)
    _state: dict = field(repr=False, default_factory=dict)
    # The class probabilities the epoch's validation metrics were scored on, one row per record
    # of val_index in its order (None without validation). Kept off `metrics`, which are reported
    # to Tune: a trial saves them with its best epoch (search/trainable.py).
    val_probabilities: np.ndarray | None = field(repr=False, default=None)

    def state(self) -> dict:
        """Everything needed to resume after this epoch (tensors, numbers and bytes only)."""
        return self._state


class WeightAverage:
    """An exponential moving average of a network's model: every float parameter and buffer
    (BatchNorm's running statistics too) moves as avg = decay * avg + (1 - decay) * w after each
    optimiser step, the first update copying w (as torch.optim.swa_utils' EMA does: the random
    initial weights never enter the average). Integer and boolean buffers (BatchNorm's batch count,
    minirocket's dilations) are copied: swa_utils' AveragedModel(use_buffers=True) averages them in
    floats and truncates, which turns minirocket's constant dilation 7 into 6.

    `network` is the average as a `Network` in eval mode: the same transform (it has no weights,
    only constant buffers worth sharing), a copy of the model."""

    def __init__(self, network: Network, decay: float) -> None:
        self.updates = 0
        self._lerp = get_ema_multi_avg_fn(decay)  # avg += (1 - decay) * (w - avg): one foreach lerp
        model = copy.deepcopy(network.model).requires_grad_(False)
        self.network = Network(network.transform, model, network.input_length).eval()
        # (average, live) lists of aliases of the tensors, gathered once: a step's update is then
        # one foreach kernel, with no per-step walk over the modules.
        self._averaged: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._copied: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for average, live in zip(_tensors(model), _tensors(network.model), strict=True):
            into = self._averaged if average.is_floating_point() or average.is_complex() else self._copied
            into[0].append(average)
            into[1].append(live)

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the network's current weights (after an optimiser step)."""
        if self.updates:
            self._lerp(*self._averaged, None)
        else:
            _copy(*self._averaged)
        _copy(*self._copied)
        self.updates += 1

    def state(self) -> dict:
        """The average's weights and update count (pass back to `load`)."""
        return {"network": self.network.state_dict(), "updates": self.updates}

    def load(self, state: dict) -> None:
        """Continue from a `state()`."""
        self.network.load_state_dict(state["network"])
        self.updates = int(state["updates"])


def _tensors(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach() for t in (*module.parameters(), *module.buffers())]


def _copy(into: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    for target, value in zip(into, values, strict=True):
        target.copy_(value)


def resolve_input_length(config: TrainConfig, data: TensorData, train_index: np.ndarray) -> int:
    """The config's input length, or the median training record length when it has none."""
    if config.input_length is not None:
        return config.input_length
    return max(16, data.median_length(train_index))


def fit(
    config: TrainConfig,
    data: TensorData,
    train_index: np.ndarray,
    val_index: np.ndarray | None,
    *,
    device: torch.device | str | None = None,
    resume: dict | None = None,
    lr_schedule: list[float] | None = None,
    head_last_epoch_only: bool = False,
) -> Iterator[EpochResult]:
    """Train `config` on the records at `train_index`, validating on `val_index` each epoch;
    with `ema_decay` > 0, validating (and yielding as `network`) the weights' moving average.

    resume: a yielded `state()`, to continue after its epoch as the run would have (one written
    before the weight average existed resumes too: the average then starts afresh).
    lr_schedule: learning rate per epoch to replay instead of the config's scheduler, which it
    overrides whatever it is (the refit, which has no validation data left, replays what the
    trial used; the number of epochs is then its length). val_index may then be empty.
    head_last_epoch_only: fit an every-epoch fitted head after the last epoch only (the refit,
    which reports no per-epoch validation, needs just the final one).
    """
    if data.labels is None:
        raise ConfigError(f"{data.record_ids[0] if len(data) else 'data'}: training needs labelled records")
    device = pick_device(device) if not isinstance(device, torch.device) else device
    train_index = np.asarray(train_index, dtype=np.int64)
    val_index = np.asarray([] if val_index is None else val_index, dtype=np.int64)
    n_classes = len(data.classes)
    input_length = resolve_input_length(config, data, train_index)

    torch.manual_seed(config.seed)
    network = build_network(config, input_length, n_classes).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    plateau = None
    if config.lr_scheduler == "plateau" and lr_schedule is None:
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
    criterion = nn.CrossEntropyLoss(weight=_class_weights(config, data.labels[train_index], n_classes, device))
    augmenter = build_augmenter(config.augmentation, input_length, fit=config.fit,
                                **config.part_options("augmentation"))

    start_epoch, history = 0, []
    early = EarlyStop.resumed(config.early_stop_patience, resume)
    head: FittedHead | None = None
    if resume:
        network.load_state_dict(resume["network"])
        optimizer.load_state_dict(resume["optimizer"])
        if plateau is not None and resume.get("plateau"):
            plateau.load_state_dict(resume["plateau"])
        start_epoch = int(resume["epoch"])
        history = list(resume.get("lr_history", []))
        head = network.model.restore_head(resume.get(_HEAD_KEY))
    elif network.model.needs_data_init:
        _initialise_model(config, network, data, train_index, device)

    # On a CUDA device that holds it, the matrix is copied there once (training/device.py).
    signals, lengths, scale = device_views(data, device)
    labels = torch.as_tensor(data.labels)
    epochs = len(lr_schedule) if lr_schedule is not None else config.epochs
    declared = network.model.fitted_head()
    head_fit = None if declared is None else declared.fit_when
    if head_fit is HeadFit.EVERY_EPOCH and head_last_epoch_only:
        head_fit = HeadFit.LAST_EPOCH
    if head_fit is HeadFit.ONLY_EPOCH:
        epochs = min(epochs, 1)  # the one fit is the whole run
    average = None
    if config.ema_decay > 0 and head_fit is not HeadFit.ONLY_EPOCH:
        average = WeightAverage(network, config.ema_decay)
        if resume and resume.get(_EMA_KEY):
            average.load(resume[_EMA_KEY])
    scored = network if average is None else average.network  # validated, head-fitted, yielded
    resolving = time.perf_counter()
    precision = _resolve_precision(config, network, optimizer, criterion, data, train_index, device, resume,
                                   stepped=head_fit is not HeadFit.ONLY_EPOCH)
    setup_seconds = time.perf_counter() - resolving  # auto's measurement: the first epoch's cost
    for epoch in range(start_epoch, epochs):
        rate = lr_schedule[epoch] if lr_schedule is not None else _scheduled_rate(config, epoch)
        if rate is not None:
            for group in optimizer.param_groups:
                group["lr"] = rate
        lr_used = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        fitted: FittedHead | None = None
        if head_fit is HeadFit.ONLY_EPOCH:
            fitted, features, window_labels = _fit_head(config, network, data, train_index, epoch, device)
            train_loss, seen = float(log_loss(fitted.predict_proba(features), window_labels)), len(window_labels)
        else:
            train_loss, seen = _train_epoch(config, network, optimizer, criterion, augmenter, signals,
                                            lengths, scale, labels, train_index, epoch, device, average, precision)
        train_seconds = time.perf_counter() - started
        metrics = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr_used,
                   "train_samples_per_s": seen / max(train_seconds, 1e-9), BF16: float(precision == "bf16")}
        if head_fit is HeadFit.EVERY_EPOCH or (head_fit is HeadFit.LAST_EPOCH and epoch + 1 == epochs):
            fitted, _, _ = _fit_head(config, scored, data, train_index, epoch, device)
        if fitted is not None:
            head = fitted
            metrics.update(head.summary())
        val_probabilities = None
        if len(val_index):
            scores, val_probabilities = _validate(config, scored, head, data, val_index, device, precision)
            metrics.update(scores)
            if plateau is not None:
                plateau.step(metrics["val_loss"])
            early.update(metrics)
        metrics["epoch_seconds"] = time.perf_counter() - started + setup_seconds
        setup_seconds = 0.0
        metrics[FINISHED] = epoch + 1 == epochs or early.stop
        history.append(lr_used)
        state = {
            "epoch": epoch + 1,
            "network": network.state_dict(),
            "optimizer": optimizer.state_dict(),
            "plateau": plateau.state_dict() if plateau is not None else None,
            **early.state(),  # best_loss, stale
            "lr_history": list(history),
            "input_length": input_length,
            _HEAD_KEY: head.to_bytes() if head is not None else None,
            _EMA_KEY: average.state() if average is not None else None,
            _PRECISION_KEY: precision,
        }
        yield EpochResult(epoch + 1, metrics, scored, head, state, val_probabilities)
        if early.stop:
            break


def _scheduled_rate(config: TrainConfig, epoch: int) -> float | None:
    """The rate of the 0-based `epoch` under a schedule fixed in advance, from the epoch index
    alone; None when the optimiser's own rate stands (constant, or the plateau scheduler's)."""
    if config.lr_scheduler != "cosine":
        return None
    floor = config.lr * config.cosine_floor
    return floor + (config.lr - floor) * (1 + math.cos(math.pi * epoch / config.epochs)) / 2


def _resolve_precision(config: TrainConfig, network: Network, optimizer: torch.optim.Optimizer,
                       criterion: nn.Module, data: TensorData, train_index: np.ndarray, device: torch.device,
                       resume: dict | None, stepped: bool) -> Precision:
    """The run's precision (training/precision.py): a resumed run's own, whatever the device (it
    continues as it began), else the config's, resolved; auto measures a step on the first
    `batch_size` training records, fitted to the input length as evaluation fits them."""
    if resume:
        return "bf16" if resume.get(_PRECISION_KEY) == "bf16" else "fp32"

    def cost() -> StepCost:
        assert data.labels is not None  # training data is labelled (checked by fit)
        rows = torch.as_tensor(train_index[:config.batch_size])
        signals, lengths, scale = data.torch_views()
        x = fit_to_length(signals.index_select(0, rows), lengths[rows], network.input_length)
        if config.normalisation == "none":
            x = x * scale[rows, None]
        y = torch.as_tensor(data.labels)[rows].to(device)
        return measure(train_step, network.model, optimizer, criterion, network.inputs(x.to(device)), y)

    return decide(config.precision, device, stepped=stepped, capable=fast_bf16(device),
                  epoch_steps=math.ceil(len(train_index) / config.batch_size), cost=cost)


def _initialise_model(config: TrainConfig, network: Network, data: TensorData, train_index: np.ndarray,
                      device: torch.device) -> None:
    """`model.initialise` on the inputs of a fixed, seeded sample of training records, fitted to
    the input length as evaluation fits them (models that fit e.g. biases to the data)."""
    rng = np.random.default_rng([config.seed, _INIT_STREAM])
    take = min(len(train_index), INIT_RECORDS)
    rows = torch.as_tensor(np.sort(rng.choice(train_index, size=take, replace=False)))
    signals, lengths, scale = data.torch_views()
    x = fit_to_length(signals.index_select(0, rows), lengths[rows], network.input_length)
    if config.normalisation == "none":
        x = x * scale[rows, None]
    with torch.no_grad():
        network.model.initialise(network.inputs(x.to(device)))


def _fit_head(config: TrainConfig, network: Network, data: TensorData, train_index: np.ndarray, epoch: int,
              device: torch.device) -> tuple[FittedHead, np.ndarray, np.ndarray]:
    """A new fitted head of the model, fitted on the features of the training windows (of at most
    its `max_records` records, drawn with the epoch); (the head, those features, their labels)."""
    assert data.labels is not None  # training data is labelled (data.prepare)
    head = network.model.fitted_head()
    assert head is not None  # fit() fits one only for a model that declares it
    records = train_index
    if head.max_records is not None:
        records = train_index[stratified_subsample(data.labels[train_index], head.max_records,
                                                   seed=config.seed + epoch)]
    features, owners = window_outputs(network, data, records, config.normalisation,
                                      config.window_overlap, device, features=True)
    window_labels = data.labels[records][owners]
    n_classes = len(data.classes)
    weights = _class_weights(config, window_labels, n_classes, torch.device("cpu"))
    head.fit(features, window_labels, n_classes=n_classes, seed=config.seed,
             weights=None if weights is None else weights[window_labels].numpy())
    return head, features, window_labels


def _train_epoch(config: TrainConfig, network: Network, optimizer: torch.optim.Optimizer,
                 criterion: nn.Module, augmenter: BatchAugmenter, signals: torch.Tensor,
                 lengths: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor,
                 train_index: np.ndarray, epoch: int, device: torch.device,
                 average: WeightAverage | None, precision: Precision) -> tuple[float, int]:
    network.train()
    torch.manual_seed(config.seed * 100_003 + epoch)  # dropout, reproducible per epoch
    order = np.random.default_rng([config.seed, epoch]).permutation(train_index)
    generator = torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + epoch)
    # On the signals' own device the augmenter reads the batch's rows in place: copying whole
    # rows out first (as wide as the longest record) cost more than the augmentation's reads.
    in_place = signals.device.type == device.type
    # Rows from the host to a CUDA device go through one pinned buffer, so the copy is asynchronous.
    staged = None if in_place else PinnedRows(signals, config.batch_size, device)
    # One input buffer for the epoch, reused: the step is done with a batch (backward included)
    # before the next one is written, and the data path then touches no new memory per batch.
    batch = torch.empty(config.batch_size, augmenter.input_length, device=device)
    total, seen = 0.0, 0
    for begin in range(0, len(order), config.batch_size):
        rows = torch.as_tensor(order[begin:begin + config.batch_size])
        if len(rows) < 2 and seen:
            break  # a batch of one breaks BatchNorm; its record is seen next epoch
        out = batch[:len(rows)]
        if in_place:
            x = augmenter(signals, lengths[rows], generator, out=out, rows=rows)
        else:
            assert staged is not None
            x = augmenter(staged(rows), lengths[rows].to(device), generator, out=out)
        if config.normalisation == "none":
            x.mul_(scale[rows, None].to(device))
        # The transform outside the step: autocast would run its matmuls in bf16 too.
        total += train_step(network.model, optimizer, criterion, network.inputs(x), labels[rows].to(device),
                            precision) * len(rows)
        if average is not None:
            average.update()
        seen += len(rows)
    return total / max(seen, 1), seen


def train_step(network: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
               x: torch.Tensor, y: torch.Tensor, precision: Precision = "fp32") -> float:
    """One optimisation step on a prepared batch, forward and loss in `precision`; returns the
    batch's mean loss."""
    with autocast(x.device, precision):
        loss = criterion(network(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _validate(config: TrainConfig, network: Network, head: FittedHead | None, data: TensorData,
              val_index: np.ndarray, device: torch.device, precision: Precision) -> tuple[dict, np.ndarray]:
    """The epoch's validation metrics and the per-record probabilities they were scored on (the
    fitted head's when it is kept apart: what the trial would deliver), the forward in the run's
    precision: validation ranks, it delivers nothing."""
    assert data.labels is not None  # training data is labelled (data.prepare)
    truth = data.labels[val_index]
    probabilities, own = record_probabilities(network, head, data, val_index, config.normalisation,
                                              config.window_overlap, device, precision)
    metrics = classification_metrics(truth, probabilities.argmax(axis=1), data.classes, prefix="val_")
    metrics["val_loss"] = float(log_loss(own, truth))  # the network's own: the loss its training lowers
    metrics["val_auroc"] = macro_auroc(probabilities, truth)
    return metrics, probabilities


def _class_weights(config: TrainConfig, train_labels: np.ndarray, n_classes: int,
                   device: torch.device) -> torch.Tensor | None:
    if config.class_weighting == "none":
        return None
    counts = np.bincount(train_labels, minlength=n_classes).astype(np.float64)
    weights = np.where(counts > 0, len(train_labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return torch.as_tensor(weights, dtype=torch.float32, device=device)
