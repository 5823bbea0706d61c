"""The precision a run's training steps take: `precision` (TrainConfig: fp32, bf16 or auto)
resolved once, at the start of a run, to fp32 or bf16; and what bf16 means for a step.

bf16 is `torch.autocast(device, torch.bfloat16)` around the model's forward and the loss of a
training step, nothing else: no loss scaling (bf16 has fp32's exponent range), the parameters,
gradients, optimiser state and BatchNorm's running statistics stay float32 (autocast casts
copies per op), and so do checkpoints and bundles. The input transform runs outside it, so the
model sees the same float32 inputs in training as in evaluation. A bf16 run's validation forward
runs under it too (training/evaluate.py: 1.6-1.9x faster here, and validation ranks, it delivers
nothing); the features the fitted heads (SVM, ridge) are fitted on, the refit's test evaluation
and `predict` are fp32 whatever a run's precision, so a delivered model computes as it was fitted.

The rule (`decide`, pure, so it is tested with stubbed capability and timings):
- fp32: fp32.
- bf16: bf16 on a device with fast bf16 (`fast_bf16`: CUDA's own report without emulation; a CPU
  with AVX512-BF16 or AMX-BF16, as torch.cpu.get_capabilities reports them; MPS and other CPUs:
  none). Elsewhere a one-line ConfigError rather than a silent fallback: an explicit bf16 asks for
  bf16 numerics, and emulated bf16 runs several times slower than fp32.
- auto: fp32 without fast bf16, and fp32 for an epoch of fewer than MIN_EPOCH_STEPS steps: the
  measurement below costs WARMUP_STEPS + TIMED_STEPS steps in each precision, which must stay a
  few percent of what the run trains. Otherwise the model's forward on one training batch is counted
  in floating-point operations (torch's FlopCounterMode: deterministic, whatever the machine's
  load); below MIN_FORWARD_FLOPS, fp32: a small model's step is the cost of launching its ops,
  which bf16 only adds casts to (issue 25: a 1 x 143 simple_cnn step 1.8x slower in bf16). Above
  it, a few training steps are timed in each precision on a copy of the network and optimiser
  (`measure`: warm-up, then alternately, median) and bf16 is chosen only when its median step is
  at least MARGIN faster (a resnet1d on CinC's shapes: 1.4x), so that timing noise never picks a
  bf16 that gains nothing.
A model trained by no step (an `ONLY_EPOCH` head, minirocket's ridge) has nothing to autocast:
fp32 whatever was asked.

The copy leaves the run untouched (its weights, running statistics, optimiser state, and the
random streams, forked around the measurement), so a run that auto resolves to fp32 is the fp32
run bit for bit. The resolved precision is reported every epoch (`bf16`: 1 or 0; under
cross-validation the share of folds that ran bf16), kept in the checkpoint so that a resumed run
keeps it, and replayed by the refit (refit.py).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ecg_tune.errors import ConfigError

Precision = Literal["fp32", "bf16"]
Asked = Literal["fp32", "bf16", "auto"]

# auto chooses bf16 only when its median step is at least this much faster than fp32's.
MARGIN = 0.10
# A model's forward on one batch below this many floating-point operations: auto is fp32 untimed.
MIN_FORWARD_FLOPS = 100e6
# An epoch of fewer steps: auto is fp32 untimed. The measurement's 2 x (WARMUP_STEPS + TIMED_STEPS)
# steps are then at most 8 % of the first epoch's, 4 % of a trial of two (full's grace period).
MIN_EPOCH_STEPS = 100
WARMUP_STEPS = 1  # per precision, untimed: the first steps allocate the optimiser state and kernels
TIMED_STEPS = 3  # per precision, alternating


@dataclass(frozen=True)
class StepCost:
    """A training step's cost: its forward's floating-point operations and, when those reach
    MIN_FORWARD_FLOPS, the median seconds per step in each precision (else None: not timed)."""

    flops: float
    fp32: float | None = None
    bf16: float | None = None


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 natively (module docstring)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        capabilities = torch.cpu.get_capabilities()
        return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))
    return False


def decide(asked: Asked, device: torch.device, *, stepped: bool, capable: bool, epoch_steps: int,
           cost: Callable[[], StepCost]) -> Precision:
    """The precision a run takes (module docstring). `stepped`: the model is trained by steps;
    `capable`: `fast_bf16(device)`; `epoch_steps`: training steps per epoch; `cost` is called
    only when auto needs it."""
    if asked == "fp32" or not stepped:
        return "fp32"
    if not capable:
        if asked == "bf16":
            raise ConfigError(f"precision: bf16 needs a device with fast bf16 (a CPU with AVX512-BF16 or "
                              f"AMX, a CUDA GPU of compute capability 8.0+); {device} has none: use "
                              f"precision=auto or fp32")
        return "fp32"
    if asked == "bf16":
        return "bf16"
    if epoch_steps < MIN_EPOCH_STEPS:
        return "fp32"
    step = cost()
    if step.flops < MIN_FORWARD_FLOPS or step.fp32 is None or step.bf16 is None:
        return "fp32"
    return "bf16" if step.bf16 <= (1 - MARGIN) * step.fp32 else "fp32"


def reported_precision(bf16: float) -> Precision:
    """The precision of a run that reported `bf16` (1 or 0; over folds, the share of folds in bf16:
    the majority's, fp32 on a tie, where either was within the measurement's noise)."""
    return "bf16" if bf16 > 0.5 else "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: Precision) -> Iterator[None]:
    """bf16 autocast on `device` for bf16; nothing at all for fp32 (its ops stay as they are)."""
    if precision == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


# A training step as the loop takes it: (model, optimiser, criterion, inputs, labels, precision).
Step = Callable[[nn.Module, torch.optim.Optimizer, nn.Module, torch.Tensor, torch.Tensor, Precision], object]


def measure(step: Step, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
            inputs: torch.Tensor, labels: torch.Tensor) -> StepCost:
    """The cost of `step` on one batch of the model's `inputs`: its forward counted, then, when
    that reaches MIN_FORWARD_FLOPS, median step times on copies of `model` and `optimizer`
    (deep-copied together, so that the copied optimiser steps the copied weights). The random
    streams are forked (dropout draws from them) and the count runs in eval mode without
    gradients, so nothing of the run moves."""
    device = inputs.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        flops = forward_flops(model, inputs)
        if flops < MIN_FORWARD_FLOPS:
            return StepCost(flops)
        twin, twin_optimizer = copy.deepcopy((model, optimizer))

        def seconds(precision: Precision) -> float:
            _synchronise(device)
            started = time.perf_counter()
            step(twin, twin_optimizer, criterion, inputs, labels, precision)
            _synchronise(device)
            return time.perf_counter() - started

        for precision in ("fp32", "bf16"):
            for _ in range(WARMUP_STEPS):
                seconds(precision)
        fp32, bf16 = [], []
        for _ in range(TIMED_STEPS):  # alternating, so that a change of load falls on both alike
            fp32.append(seconds("fp32"))
            bf16.append(seconds("bf16"))
    return StepCost(flops, statistics.median(fp32), statistics.median(bf16))


def forward_flops(model: nn.Module, inputs: torch.Tensor) -> float:
    """Floating-point operations of `model`'s forward on `inputs` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(inputs)
    finally:
        model.train(was_training)
    return float(counter.get_total_flops())


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
