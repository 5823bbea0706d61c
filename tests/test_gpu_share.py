"""GPUs shared safely (issue 25, item 2), without a GPU: Ray's logical GPU (the module's cluster
has one) and CUDA stubbed at its one seam, training/device.py's `CUDA`.

- a trial given a fractional GPU addresses it as cuda:0 and caps its CUDA memory at its share; a
  whole GPU is not capped; a trial without one makes no CUDA call;
- a dataset's matrix moves to a CUDA device that holds it, once; batches otherwise come through
  one pinned buffer, refilled only after the copy out of it;
- a CUDA out-of-memory in a trial is that trial's one-line failure, its retry fails at once, and a
  search with one such trial finishes the others.

Nothing here measures CUDA: no GPU was lent (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from ray import tune

from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.data.tensors import TensorData
from ecg_tune.errors import OutOfGpuMemory
from ecg_tune.pipeline import PipelineOptions, run_pipeline
from ecg_tune.search import trainable
from ecg_tune.search.plan import SearchOptions
from ecg_tune.search.trainable import OOM_MARK, out_of_memory_as_failure, train_trial
from ecg_tune.training import device as device_module
from ecg_tune.training.device import (DATA_SHARE, OOM_HOOK, PinnedRows, device_views, keeps_on_device,
                                      pick_device)
from ecg_tune.training.folds import choose_validation

CUDA0 = torch.device("cuda", 0)
# The trials of the module's search that run out of memory (the hook's KEY=VALUE).
FAILING = "batch_size=64"


@pytest.fixture(autouse=True, scope="module")
def _oom_hook_in_the_workers():
    """The hook in this process's environment before the module's cluster starts, so that its
    worker processes inherit it (autouse: set up before `ray_cluster`)."""
    patch = pytest.MonkeyPatch()
    patch.setenv(OOM_HOOK, FAILING)
    yield
    patch.undo()


class StubCuda:
    """`Cuda` on a machine without CUDA: every call recorded; a "device" tensor is a host copy."""

    def __init__(self, free: int = 16 << 30, total: int = 16 << 30, fraction: float = 1.0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.free, self.total, self.fraction = free, total, fraction

    def is_available(self) -> bool:
        self.calls.append(("is_available",))
        return True

    def cap_memory(self, fraction: float, device: torch.device) -> None:
        self.calls.append(("cap_memory", fraction, device))

    def memory(self, device: torch.device) -> tuple[int, int]:
        self.calls.append(("memory", device))
        return self.free, self.total

    def memory_fraction(self, device: torch.device) -> float:
        self.calls.append(("memory_fraction", device))
        return self.fraction

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        self.calls.append(("pinned", shape))
        return torch.empty(shape, dtype=dtype)

    def copy(self, tensor: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
        self.calls.append(("copy", tuple(tensor.shape), device, non_blocking, tensor.data_ptr()))
        return tensor.clone()

    def event(self) -> StubEvent:
        return StubEvent(self.calls)


class StubEvent:
    def __init__(self, calls: list[tuple[Any, ...]]) -> None:
        self.calls = calls

    def record(self) -> None:
        self.calls.append(("record",))

    def synchronize(self) -> None:
        self.calls.append(("synchronize",))


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> StubCuda:
    stub = StubCuda()
    monkeypatch.setattr(device_module, "CUDA", stub)
    return stub


# --- the device a Ray worker trains on, and its memory cap --------------------------------------

def device_in_worker() -> tuple[str, list[tuple[Any, ...]], str | None]:
    """In a Ray worker: the device `pick_device` picks with CUDA stubbed there, the CUDA calls it
    made, and the CUDA_VISIBLE_DEVICES Ray set. The worker gets its own CUDA back (a trial may
    reuse it)."""
    real, stub = device_module.CUDA, StubCuda()
    device_module.CUDA = stub
    try:
        return str(pick_device()), stub.calls, os.environ.get("CUDA_VISIBLE_DEVICES")
    finally:
        device_module.CUDA = real


@pytest.fixture
def by_value():
    """This module's functions and classes sent to Ray's workers by value (they cannot import it)."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_gpu_share_is_cuda_0_capped_at_the_share(ray_cluster, by_value) -> None:
    ray = ray_cluster
    quarter = ray.get(ray.remote(num_cpus=1, num_gpus=0.25)(device_in_worker).remote())
    assert quarter == ("cuda:0", [("is_available",), ("cap_memory", 0.25, CUDA0)], "0")
    whole = ray.get(ray.remote(num_cpus=1, num_gpus=1)(device_in_worker).remote())
    assert whole == ("cuda:0", [("is_available",)], "0")  # a whole GPU: no cap
    # No share: the CPU, without a CUDA call, even where CUDA is available.
    assert ray.get(ray.remote(num_cpus=1)(device_in_worker).remote())[:2] == ("cpu", [])


def test_outside_ray_cuda_is_used_uncapped(cuda: StubCuda) -> None:
    # The driver of a search (this process runs one in another test) is not a worker.
    assert pick_device() == CUDA0 and cuda.calls == [("is_available",)]
    assert pick_device("cpu") == torch.device("cpu") and len(cuda.calls) == 1


# --- the data path ------------------------------------------------------------------------------

def tensors(rows: int = 6, width: int = 10) -> TensorData:
    signals = np.arange(rows * width, dtype=np.float32).reshape(rows, width)
    return TensorData(signals=signals, lengths=np.full(rows, width, dtype=np.int64),
                      scale=np.linspace(1, 2, rows, dtype=np.float32), labels=np.zeros(rows, dtype=np.int64),
                      classes=["N"], record_ids=[str(i) for i in range(rows)])


def test_the_matrix_lives_on_a_device_that_holds_it(cuda: StubCuda) -> None:
    data = tensors()
    needed = data.signals.nbytes + data.scale.nbytes
    cuda.free, cuda.total, cuda.fraction = 10 * needed, 4 * needed, 0.5  # the cap leaves 2x: half fits
    assert keeps_on_device(needed, CUDA0) and not keeps_on_device(needed + 1, CUDA0)
    assert DATA_SHARE == 0.5
    signals, lengths, scale = device_views(data, CUDA0)
    moved = [call for call in cuda.calls if call[0] == "copy"]
    assert [(shape, device) for _, shape, device, *_ in moved] == [((6, 10), CUDA0), ((6,), CUDA0)]
    assert torch.equal(signals, torch.from_numpy(data.signals)) and torch.equal(scale, torch.from_numpy(data.scale))
    assert lengths.data_ptr() == data.lengths.ctypes.data  # the lengths stay a view on the host
    # Once moved, kept: the next fold gets the same tensors though the card has filled up since.
    cuda.free = 0
    again = device_views(data, CUDA0)
    assert again[0] is signals and again[2] is scale and len([c for c in cuda.calls if c[0] == "copy"]) == 2
    # A copy sent to another process (the object store) carries the arrays, not the moved tensors.
    assert pickle.loads(pickle.dumps(data)).device_copies == {}


def test_a_matrix_too_large_for_the_share_stays_on_the_host(cuda: StubCuda) -> None:
    data = tensors()
    cuda.fraction = 1e-9  # a share too small for it
    signals, _, _ = device_views(data, CUDA0)
    assert signals.data_ptr() == data.signals.ctypes.data and not [c for c in cuda.calls if c[0] == "copy"]
    # The CPU (or no device): the zero-copy views, no CUDA call.
    cuda.calls.clear()
    assert data.torch_views()[0].data_ptr() == data.signals.ctypes.data
    assert device_views(data, torch.device("cpu"))[0].data_ptr() == data.signals.ctypes.data
    assert not keeps_on_device(1, torch.device("cpu")) and cuda.calls == []


def test_batches_from_the_host_go_through_one_pinned_buffer(cuda: StubCuda) -> None:
    host = torch.from_numpy(tensors(rows=8).signals)
    staged = PinnedRows(host, 4, CUDA0)
    assert cuda.calls == [("pinned", (4, 10))]
    buffer = staged.buffer
    assert buffer is not None
    cuda.calls.clear()
    for rows in ([5, 1, 7, 0], [2, 3]):  # a full batch, then a shorter last one
        batch = staged(torch.tensor(rows))
        assert torch.equal(batch, host[rows])
    # Each batch: wait for the copy out of the buffer, refill it, copy it out asynchronously from
    # the buffer itself (not a fresh pageable tensor), then mark that copy.
    out_of_buffer = ("copy", (4, 10), CUDA0, True, buffer.data_ptr())
    assert cuda.calls == [("synchronize",), out_of_buffer, ("record",),
                          ("synchronize",), ("copy", (2, 10), CUDA0, True, buffer.data_ptr()), ("record",)]
    # On the CPU (the loop's in-place path reads the matrix itself) nothing is pinned.
    cuda.calls.clear()
    assert torch.equal(PinnedRows(host, 4, torch.device("cpu"))(torch.tensor([3])), host[[3]])
    assert cuda.calls == []


# --- a CUDA out-of-memory: the trial's one-line failure -----------------------------------------

def test_an_out_of_memory_is_one_line_naming_the_config_and_the_share(monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config({"model": "resnet1d", "input_length": 6000, "batch_size": 128})
    monkeypatch.setattr(device_module, "gpu_share", lambda: 0.25)
    with pytest.raises(OutOfGpuMemory) as raised, out_of_memory_as_failure(config):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                          "capacity of 15.77 GiB of which 1.20 GiB is free.\nMore lines")
    assert str(raised.value) == (
        "CUDA out of memory (allocating 2.00 GiB) training model resnet1d, input_length 6000, batch_size 128 "
        "on a 0.25 share of a GPU: lower batch_size or input_length, or give each trial more of the GPU "
        "(--gpus-per-trial 0.5)")
    assert isinstance(raised.value.__cause__, torch.cuda.OutOfMemoryError)
    # Other errors pass through as they are.
    with pytest.raises(ValueError), out_of_memory_as_failure(config):
        raise ValueError("not memory")


class Context:
    """`tune.get_context()` as a trial sees it: its working folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get_trial_dir(self) -> str:
        return str(self.folder)


def test_a_retry_after_an_out_of_memory_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dataset = prepare("synthetic:40", progress=False)
    folds = choose_validation(dataset, 1, 0).folds
    monkeypatch.setattr(tune, "get_context", lambda: Context(tmp_path))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    config = {"model": "simple_cnn", "input_length": 600, "batch_size": 64}
    with pytest.raises(OutOfGpuMemory) as first:
        train_trial(config, dataset.tensors, folds, max_epochs=1, seed=0)
    assert (tmp_path / OOM_MARK).read_text() == str(first.value)
    # Tune's retry (the hook gone, as if memory would run out later): the same line, nothing trained.
    monkeypatch.delenv(OOM_HOOK)
    monkeypatch.setattr(trainable, "fit_folds", lambda *a, **k: pytest.fail("a retry trained"))
    with pytest.raises(OutOfGpuMemory) as retried:
        train_trial(config, dataset.tensors, folds, max_epochs=1, seed=0)
    assert str(retried.value) == str(first.value) and retried.value.__cause__ is None


def test_one_line_trial_errors_keeps_our_line_and_other_tracebacks() -> None:
    import logging
    import sys

    from ecg_tune.search.progress import OneLineTrialErrors

    class Wrapped(Exception):  # as Ray's RayTaskError carries the task's own error
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback (most recent call last):\n  File ...")
            self.cause = cause

    def record(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except BaseException:
            return logging.LogRecord("ray.tune", logging.ERROR, __file__, 1, "Trial task failed for trial %s",
                                     ("train_trial_1",), sys.exc_info())

    ours = record(Wrapped(OutOfGpuMemory("CUDA out of memory training model simple_cnn")))
    assert OneLineTrialErrors().filter(ours) and ours.exc_info is None
    assert logging.Formatter().format(ours) == ("Trial task failed for trial train_trial_1: OutOfGpuMemory: "
                                                "CUDA out of memory training model simple_cnn")
    bug = record(Wrapped(ValueError("a bug")))
    assert OneLineTrialErrors().filter(bug) and bug.exc_info is not None  # a bug keeps its traceback
    assert "Traceback" in logging.Formatter().format(bug)


def test_a_search_finishes_the_trials_that_fit(ray_cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A grid of three batch sizes on the logical GPU's quarters; the hook (FAILING) makes the
    # batch_size 64 trial run out of memory in its worker, as it would on a small share.
    import logging

    from ecg_tune.search.progress import TUNE_CONTROLLER_LOGGER

    logging.getLogger(TUNE_CONTROLLER_LOGGER).addHandler(caplog.handler)  # Ray's loggers do not propagate
    space = tmp_path / "batches.yaml"
    space.write_text("model: simple_cnn\ninput_length: 600\nlr: 0.003\n"
                     "batch_size: {type: choice, values: [16, 32, 64]}\nsearch: {searcher: grid, max_epochs: 1}\n")
    out = tmp_path / "out"
    result = run_pipeline(PipelineOptions(search=SearchOptions(out=out, cv=1, cpus_per_trial=1, gpus_per_trial=0.25),
                                          space=space, refit=None),
                          dataset=prepare("synthetic:60", progress=False), log=lambda _: None)
    assert result.plan.gpus_per_trial == 0.25
    trials = pd.read_csv(out / "trials.csv")
    status = dict(zip(trials["config/batch_size"], trials["status"], strict=True))
    assert status == {16: "completed", 32: "completed", 64: "errored"}
    assert result.best is not None and result.best.config["batch_size"] in (16, 32)
    line = ("CUDA out of memory (allocating 1.00 GiB) training model simple_cnn, input_length 600, batch_size 64 "
            "on a 0.25 share of a GPU: lower batch_size or input_length, or give each trial more of the GPU "
            "(--gpus-per-trial 0.5)")
    errors = {folder.name: (folder / "error.txt").read_text() for folder in (out / "experiment").glob("train_trial_*")
              if (folder / "error.txt").is_file()}
    assert len(errors) == 1 and f"OutOfGpuMemory: {line}" in next(iter(errors.values())), errors
    # trials.csv says why in one line; the trials that fit have no error.
    reasons = dict(zip(trials["config/batch_size"], trials["error"], strict=True))
    assert reasons[64] == f"OutOfGpuMemory: {line}" and pd.isna(reasons[16]) and pd.isna(reasons[32])
    # The console: Tune's record of each failed attempt is that line, not Ray's traceback.
    logging.getLogger(TUNE_CONTROLLER_LOGGER).removeHandler(caplog.handler)
    failed = [r for r in caplog.records if r.name == TUNE_CONTROLLER_LOGGER and "Trial task failed" in r.getMessage()]
    assert failed and all(r.getMessage().endswith(f"OutOfGpuMemory: {line}") and r.exc_info is None for r in failed)


def test_a_refit_that_runs_out_of_memory_fails_in_one_line(ray_cluster) -> None:
    from ecg_tune.refit import train_and_predict

    dataset = prepare("synthetic:40", progress=False)
    # The hook (FAILING) is in the workers' environment: this config runs out of memory in its task.
    config = make_config({"model": "simple_cnn", "input_length": 600, "batch_size": 64, "epochs": 1})
    with pytest.raises(OutOfGpuMemory) as raised:
        train_and_predict(config, dataset, dataset.index("train"), dataset.index("test"), [0.001], gpus=0.25)
    assert str(raised.value) == (
        "CUDA out of memory (allocating 1.00 GiB) training model simple_cnn, input_length 600, batch_size 64 "
        "on a 0.25 share of a GPU: lower batch_size or input_length, or give the refit more of the GPU "
        "(ecg-tune refit --gpus 0.5)")
    assert type(raised.value) is OutOfGpuMemory  # the task's own error, not Ray's wrapper with its traceback

