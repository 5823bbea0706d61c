"""The training device: a GPU when this process was given one, else Apple MPS, else the CPU.

Inside a Ray trial the GPUs a trial may use are the ones Ray assigned to it (`ray.get_gpu_ids()`);
a trial with no GPU share must not touch a GPU even when the machine has one. Outside Ray, CUDA is
used when present. (The seed notebook's `"cuda" if available else "mps"` fails on CPU-only Linux.)
"""

from __future__ import annotations

import torch


def _ray_gpu_ids() -> list | None:
    """The GPU ids Ray gave this worker, or None when not running inside a Ray worker."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        context = ray.get_runtime_context()
        if context.worker.mode != ray.WORKER_MODE:
            return None
        return list(ray.get_gpu_ids())
    except Exception:  # ray missing or not in a worker: decide without it
        return None


def pick_device(preferred: str | None = None) -> torch.device:
    """`preferred` ("cpu", "cuda", "cuda:1", "mps") when given, else the best device this process has."""
    if preferred:
        return torch.device(preferred)
    ray_gpus = _ray_gpu_ids()
    if ray_gpus is not None:
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so the first visible one is ours.
        return torch.device("cuda:0") if ray_gpus and torch.cuda.is_available() else torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda:0")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
