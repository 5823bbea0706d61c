"""The training device and this process's share of it: which device trains, how much CUDA memory
the process may take, where a dataset's matrix lives, and the seam (`CUDA`) through which
these call CUDA.

Inside a Ray worker (a trial, a refit task) the device follows what Ray assigned the process
(`gpu_share`, from `ray.get_runtime_context().get_assigned_resources()`). With a GPU share it is
`cuda:0`: Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned, so the first visible one is ours
whatever its number on the machine (indexing by `ray.get_gpu_ids()` gives "invalid device
ordinal"). A fractional share (`--gpus-per-trial 0.25`) also caps the process's CUDA memory at
that fraction of the card (`torch.cuda.set_per_process_memory_fraction`), so that one trial
cannot starve the others on it; the cap bounds what torch allocates, not the CUDA context each
process holds besides it. Without a share: the CPU, even on a machine with GPUs. Outside Ray:
CUDA when present, else Apple MPS, else the CPU (the seed notebook's `"cuda" if available else
"mps"` fails on CPU-only Linux).

On a CUDA device a dataset's matrix lives on the device (`device_views`) when it takes at most
half of the memory the process may still take (`keeps_on_device`), so batches are read there with no copy; when it
does not, `PinnedRows` gathers each batch's rows into one pinned host buffer and copies them
from there, the only way a `non_blocking` copy overlaps the host's work (from pageable memory,
such as the fresh tensor `index_select` returns, CUDA copies synchronously).

A CUDA out-of-memory while training becomes one line (`out_of_memory_as_error`: the model, its
input length and batch size, the GPU share, what to change) for a trial and for a refit task alike.

The CUDA calls made here go through `CUDA` (a `Cuda`), so tests can stand a stub in for it and
check this logic on a machine without a GPU.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

import torch

from ecg_tune.data.tensors import TensorData
from ecg_tune.errors import OutOfGpuMemory

if TYPE_CHECKING:
    from ecg_tune.config import TrainConfig

# For tests only: a CUDA out-of-memory cannot be caused without a GPU, and a test's monkeypatch
# does not reach Ray's worker processes (they inherit the environment the cluster started with).
# Training a config with KEY=VALUE (this variable's value, e.g. "batch_size=64") inside
# `out_of_memory_as_error` raises torch's out-of-memory error as it starts.
OOM_HOOK = "ECG_TUNE_TEST_CUDA_OOM"

# The part of the memory a process may take that a dataset's matrix may fill on the device: the
# model, its activations, gradients and optimiser state need the rest. A guess, not a
# measurement: no GPU was at hand (docs/benchmarks.md).
DATA_SHARE = 0.5


class CudaEvent(Protocol):
    def record(self) -> None: ...

    def synchronize(self) -> None: ...


class Cuda(Protocol):
    """The CUDA calls made here (torch.cuda's, in `TorchCuda`)."""

    def is_available(self) -> bool: ...

    def cap_memory(self, fraction: float, device: torch.device) -> None:
        """Let this process allocate at most `fraction` of `device`'s memory."""

    def memory(self, device: torch.device) -> tuple[int, int]:
        """(free, total) bytes of `device`'s memory."""
        ...

    def memory_fraction(self, device: torch.device) -> float:
        """The share of `device`'s memory this process may allocate (1.0 when not capped)."""
        ...

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor in page-locked host memory."""
        ...

    def copy(self, tensor: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
        """`tensor` copied to `device`."""
        ...

    def event(self) -> CudaEvent: ...


class TorchCuda:
    """`Cuda` as torch.cuda does it."""

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    def cap_memory(self, fraction: float, device: torch.device) -> None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)

    def memory(self, device: torch.device) -> tuple[int, int]:
        free, total = torch.cuda.mem_get_info(device)
        return int(free), int(total)

    def memory_fraction(self, device: torch.device) -> float:
        return float(torch.cuda.get_per_process_memory_fraction(device))

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def copy(self, tensor: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
        return tensor.to(device, non_blocking=non_blocking)

    def event(self) -> CudaEvent:
        return torch.cuda.Event()


CUDA: Cuda = TorchCuda()  # read at every call, so that a test's replacement takes effect


def gpu_share() -> float | None:
    """The GPUs Ray assigned to this process (0.25 for a quarter of one, 0.0 for none), or None
    outside a Ray worker (a driver, a plain script)."""
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:
        return None
    return float(context.get_assigned_resources().get("GPU", 0.0))


def pick_device(preferred: str | None = None) -> torch.device:
    """`preferred` ("cpu", "cuda", "cuda:1", "mps") when given, else the best device this process
    has; in a Ray worker with a fractional GPU share, its CUDA memory is capped at that share."""
    if preferred:
        return torch.device(preferred)
    share = gpu_share()
    if share is not None:
        return _assigned_device(share)
    if CUDA.is_available():
        return torch.device("cuda", 0)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _assigned_device(share: float) -> torch.device:
    """The device of a Ray worker given `share` GPUs (no CUDA call without a share)."""
    if share <= 0 or not CUDA.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", 0)
    if share < 1:
        CUDA.cap_memory(share, device)
    return device


def keeps_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether a dataset matrix of `nbytes` should live on `device`: a CUDA device only, and only
    when it takes at most DATA_SHARE of what this process may take there (its cap, or what is
    free on the card when that is less)."""
    if device.type != "cuda":
        return False
    free, total = CUDA.memory(device)
    return nbytes <= DATA_SHARE * min(free, total * CUDA.memory_fraction(device))


def device_views(data: TensorData, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(signals, lengths, scale) of `data` for training on `device`: the CPU views, except on a
    device that keeps the matrix (`keeps_on_device`), where signals and scale are copied once and
    kept in `data.device_copies` for the next fold. The lengths stay on the host, where the
    augmenter reads them as integers every batch."""
    signals, lengths, scale = data.torch_views()
    # Once moved, always moved: the memory the copy took must not make a later call (the next
    # fold) decide the matrix no longer fits.
    if device not in data.device_copies and keeps_on_device(data.signals.nbytes + data.scale.nbytes, device):
        data.device_copies[device] = (to_device(signals, device), to_device(scale, device))
    if device in data.device_copies:
        signals, scale = data.device_copies[device]
    return signals, lengths, scale


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device` (through `CUDA` for a CUDA device)."""
    return CUDA.copy(tensor, device) if device.type == "cuda" else tensor.to(device)


class PinnedRows:
    """Rows of a matrix copied to `device` a batch at a time. From the host to CUDA: through one
    pinned buffer of `rows` rows, allocated once, from which the copy is asynchronous; the buffer
    is refilled only once the copy out of it has finished (an event recorded after each copy),
    so that copy never reads the next batch's rows. Otherwise (a matrix already on a CUDA device,
    or no CUDA): a plain gather and copy."""

    def __init__(self, host: torch.Tensor, rows: int, device: torch.device) -> None:
        self.host, self.device = host, device
        self.buffer: torch.Tensor | None = None
        self.copied: CudaEvent | None = None
        if device.type == "cuda" and host.device.type == "cpu":
            self.buffer = CUDA.pinned((rows, *host.shape[1:]), host.dtype)
            self.copied = CUDA.event()

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """host[rows] on the device."""
        if self.buffer is None or self.copied is None:
            return self.host.index_select(0, rows.to(self.host.device)).to(self.device)
        self.copied.synchronize()  # the previous batch's copy out of the buffer (none yet: at once)
        staged = self.buffer[: len(rows)]
        torch.index_select(self.host, 0, rows, out=staged)
        moved = CUDA.copy(staged, self.device, non_blocking=True)
        self.copied.record()
        return moved


@contextmanager
def out_of_memory_as_error(config: TrainConfig, who: str = "each trial",
                           flag: str = "--gpus-per-trial") -> Iterator[None]:
    """Torch's CUDA out-of-memory inside (or OOM_HOOK's) as `OutOfGpuMemory`, one line
    (`out_of_memory_message`; `who` gets more of the GPU with `flag`)."""
    try:
        key, _, value = os.environ.get(OOM_HOOK, "").partition("=")
        if key and str(getattr(config, key, None)) == value:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 1.00 GiB ({OOM_HOOK})")
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise OutOfGpuMemory(out_of_memory_message(config, gpu_share(), exc, who, flag)) from exc


def out_of_memory_message(config: TrainConfig, share: float | None, error: BaseException,
                          who: str = "each trial", flag: str = "--gpus-per-trial") -> str:
    """The line training `config` on `share` GPUs (None: not a Ray worker) fails with when CUDA
    memory runs out (`error`: torch's, whose allocation size it quotes); on a share, it tells
    how to give `who` (each trial, the refit) more of the GPU: `flag`."""
    length = config.input_length if config.input_length is not None else "auto (the median record length)"
    tried = re.search(r"Tried to allocate (\S+ \S+?B)", str(error))
    quoted = f" (allocating {tried[1]})" if tried else ""
    what = f"model {config.model}, input_length {length}, batch_size {config.batch_size}"
    if share is None or share >= 1:
        return f"CUDA out of memory{quoted} training {what} on its GPU: lower batch_size or input_length"
    return (f"CUDA out of memory{quoted} training {what} on a {share:g} share of a GPU: lower batch_size or "
            f"input_length, or give {who} more of the GPU ({flag} {min(1.0, 2 * share):g})")
