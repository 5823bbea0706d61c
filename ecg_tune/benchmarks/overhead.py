"""`benchmark overhead` and `benchmark gpu`: what Ray Tune costs per trial, how memory grows with
concurrent trials, and (where CUDA exists) throughput of several trials sharing one GPU.

- per-trial cost: many tiny trials (the dataset bound with `tune.with_parameters` as in a real
  search, one report each); a Tune callback records, per trial, the driver's wall time from the
  trial's start to its first result, and the run gives trials per minute;
- memory: the same short real search (fixed config, 2 epochs) with 1 and with 4 trials at once,
  the proportional set size (PSS, so shared object-store pages count once) of the driver and
  every Ray process sampled every 0.2 s; if each trial copied the dataset, 4 concurrent trials
  would need about 3 more copies of it;
- gpu: 1, 2, 4 and 8 concurrent trials at 1, 0.5, 0.25 and 0.125 GPU each, aggregate training
  samples per second.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecg_tune.data import Dataset
from ecg_tune.search.space import SearchSpace

if TYPE_CHECKING:
    import psutil

    from ecg_tune.data.tensors import TensorData

# One realistic trial: the seed's network on the wavelet input with every augmentation.
# (Spaces are read in order: input_length and wavelet must come before levels.)
MEMORY_CONFIG = {"model": "simple_cnn", "input_length": 9000, "transform": "wavelet", "wavelet": "db2",
                 "levels": 6, "augmentation": "all"}
GPU_CONFIG = {"model": "resnet1d", "width": 16, "depth": 4, "input_length": 9000, "transform": "none",
              "augmentation": "all"}


def _tiny_trial(config: dict, data: TensorData) -> None:
    from ray import tune

    assert data.labels is not None  # a prepared dataset is labelled
    tune.report({"records": len(data.labels)})


def trial_cost(dataset: Dataset, trials: int, reuse_actors: bool) -> dict:
    """Start-to-first-report seconds per tiny trial and trials per minute, 1 CPU per trial, with
    a fresh worker process per trial (Tune's default) or with workers reused across trials."""
    import ray
    from ray import tune

    starts: dict[str, float] = {}
    first: dict[str, float] = {}

    class Clock(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            starts[trial.trial_id] = time.perf_counter()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            first.setdefault(trial.trial_id, time.perf_counter())

    cpus = ray.cluster_resources().get("CPU", 1)
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_tiny_trial, data=dataset.tensors), {"cpu": 1}),
            param_space={"k": tune.grid_search(list(range(trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=int(cpus), reuse_actors=reuse_actors),
            run_config=tune.RunConfig(storage_path=storage, name="overhead", callbacks=[Clock()], verbose=0),
        )
        started = time.perf_counter()
        tuner.fit()
        wall = time.perf_counter() - started
    delays = np.array([first[k] - starts[k] for k in first if k in starts])
    # Tune calls on_trial_start once the trial's worker is up, so the delay above is only the
    # reporting path; a worker's start-up shows in the time a trial holds its slot.
    return {"trials": trials, "concurrent": int(cpus), "reuse_actors": reuse_actors, "wall_s": wall,
            "trials_per_minute": trials / wall * 60, "slot_seconds_per_trial": int(cpus) * wall / trials,
            "first_trial_started_after_s": min(starts.values()) - started,
            "start_to_first_report_s": {"median": float(np.median(delays)), "p90": float(np.percentile(delays, 90)),
                                        "max": float(delays.max()), "first_trial": float(delays[0])}}


class PeakMemory:
    """Peak memory of this process and all its descendants (the Ray processes), sampled in a thread.

    `peak` is the largest sum of PSS (shared pages split among the processes mapping them, so the
    object store counts once); `worker_uss_peak` the largest private memory (USS) of any one Ray
    worker: a trial that copied the dataset would hold at least the dataset's size privately.
    """

    def __init__(self, interval: float = 0.2):
        import psutil

        self._psutil, self.interval = psutil, interval
        self.peak, self.worker_uss_peak, self.samples = 0, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        me = self._psutil.Process()
        total = 0
        for process in [me, *me.children(recursive=True)]:
            try:
                info = process.memory_full_info()
                if process.pid != me.pid and _is_ray_worker(process):
                    self.worker_uss_peak = max(self.worker_uss_peak, info.uss)
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied, self._psutil.ZombieProcess):
                continue
            total += info.pss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _probe_copy(refs: list) -> dict:
    """In a Ray worker: private memory before and after fetching the dataset and reading all of it."""
    import psutil
    import ray

    process = psutil.Process()
    before = process.memory_full_info().uss
    data = ray.get(refs[0])
    signals, _, _ = data.torch_views()
    float(signals.sum())  # touch every page
    after = process.memory_full_info().uss
    return {"private_before_mib": before / 2**20, "private_after_mib": after / 2**20,
            "added_mib": (after - before) / 2**20, "dataset_signals_mib": data.signals.nbytes / 2**20,
            "array_owns_its_memory": bool(data.signals.flags.owndata)}


def data_copy_probe(dataset: Dataset) -> dict:
    """Whether a worker that fetches the dataset from the object store copies it (it should not)."""
    import ray

    return ray.get(ray.remote(num_cpus=1)(_probe_copy).remote([ray.put(dataset.tensors)]))


def _is_ray_worker(process: psutil.Process) -> bool:
    # Ray renames its worker processes "ray::<task or actor>" (in the command line; the short
    # process name may keep "python").
    command = process.cmdline()
    return process.name().startswith("ray::") or bool(command and command[0].startswith("ray::"))


def fixed_space(values: dict, trials: int, max_epochs: int) -> SearchSpace:
    """A space of constants (every trial trains the same config), validated like any user's."""
    settings = {"searcher": "optuna", "num_samples": trials, "max_epochs": max_epochs, "grace_period": max_epochs}
    return SearchSpace.from_mapping({"description": "benchmark: one fixed config", "search": settings, **values},
                                    name="fixed")


def search_memory(dataset: Dataset, concurrent: int, max_epochs: int, log: Callable[[str], None]) -> dict:
    """Peak PSS of a search running `concurrent` trials of MEMORY_CONFIG at once."""
    import ray

    from ecg_tune.pipeline import PipelineOptions, run_pipeline
    from ecg_tune.search.plan import SearchOptions

    cpus = ray.cluster_resources().get("CPU", 1)
    with tempfile.TemporaryDirectory() as folder:
        options = SearchOptions(out=Path(folder) / "run", max_concurrent=concurrent,
                                cpus_per_trial=min(1.0, cpus / concurrent), scheduler="fifo")
        pipeline = PipelineOptions(search=options, space=fixed_space(MEMORY_CONFIG, concurrent, max_epochs),
                                   refit=None)
        baseline = PeakMemory().current()
        with PeakMemory() as memory:
            started = time.perf_counter()
            run_pipeline(pipeline, dataset=dataset, log=log)
            wall = time.perf_counter() - started
    log(f"{concurrent} trial(s) at once: peak {memory.peak / 2**20:.0f} MiB (before: {baseline / 2**20:.0f} MiB), "
        f"largest private memory of one worker {memory.worker_uss_peak / 2**20:.0f} MiB, {wall:.0f} s")
    return {"concurrent": concurrent, "peak_pss_mib": memory.peak / 2**20, "before_pss_mib": baseline / 2**20,
            "worker_uss_peak_mib": memory.worker_uss_peak / 2**20, "samples": memory.samples, "wall_s": wall}


PARTS = ("trials", "memory", "searcher")


def run_overhead_benchmark(dataset: Dataset, tiny_trials: int = 40, max_epochs: int = 2,
                           log: Callable[[str], None] = print, parts: tuple[str, ...] = PARTS,
                           searcher_trials: int = 1000, searcher_ray_trials: int = 200) -> dict:
    """The parts asked for: `trials` (Tune's cost per tiny trial, and whether a worker copies the
    dataset), `memory` (1 against 4 trials at once), `searcher` (benchmarks/searcher_cost.py: the
    searcher's cost per trial up to `searcher_trials` in process, then `searcher_ray_trials`
    through Tune)."""
    import importlib.util

    import ray

    if importlib.util.find_spec("psutil") is None:
        from ecg_tune.errors import EcgTuneError

        raise EcgTuneError("benchmark overhead needs psutil: pip install -e '.[benchmark]'")
    result: dict = {"parts": list(parts)}
    if "searcher" in parts:
        from ecg_tune.benchmarks import searcher_cost

        # Before Ray starts: its idle processes would share the two cores with the driver.
        result["searcher"] = {"curves": searcher_cost.searcher_curves(dataset, searcher_trials, log)}
    # Four logical CPUs on any machine, so that "4 trials at once" is the same experiment everywhere;
    # a cluster of its own ("local"), not one another process left running.
    ray.init(address="local", num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        if "trials" in parts:
            result["trial_cost"] = []
            for reuse in (False, True):
                cost = trial_cost(dataset, tiny_trials, reuse)
                result["trial_cost"].append(cost)
                log(f"tiny trials, reuse_actors={reuse}: {cost['trials_per_minute']:.0f} trials/min with "
                    f"{cost['concurrent']} at once ({cost['slot_seconds_per_trial']:.1f} s per trial and slot); "
                    f"start to first report median "
                    f"{cost['start_to_first_report_s']['median']:.2f} s "
                    f"(first trial {cost['start_to_first_report_s']['first_trial']:.2f} s)")
            probe = result["copy_probe"] = data_copy_probe(dataset)
            log(f"a worker that fetched the dataset and read all {probe['dataset_signals_mib']:.0f} MiB of its "
                f"signals added {probe['added_mib']:.1f} MiB of private memory")
        if "memory" in parts:
            result["memory"] = [search_memory(dataset, n, max_epochs, log) for n in (1, 4)]
            result["max_epochs"], result["memory_config"] = max_epochs, MEMORY_CONFIG
        if "searcher" in parts:
            result["searcher"]["through_tune"] = searcher_cost.through_tune(dataset, searcher_ray_trials, log)
    finally:
        ray.shutdown()
    data_mib = sum(a.nbytes for a in vars(dataset.tensors).values() if isinstance(a, np.ndarray)) / 2**20
    result["dataset_mib"] = data_mib
    if "memory" in result:
        extra = result["extra_mib_4_vs_1"] = result["memory"][1]["peak_pss_mib"] - result["memory"][0]["peak_pss_mib"]
        log(f"dataset arrays {data_mib:.0f} MiB; 4 trials at once used {extra:.0f} MiB more than 1 "
            f"(3 more copies of the data would be {3 * data_mib:.0f} MiB)")
    return result


def run_gpu_benchmark(dataset: Dataset, shares: tuple[int, ...] = (1, 2, 4, 8), max_epochs: int = 2,
                      log: Callable[[str], None] = print) -> dict:
    """Aggregate training samples/s with 1..8 trials sharing one GPU (call only where CUDA exists)."""
    import os

    import ray

    from ecg_tune.pipeline import PipelineOptions, run_pipeline
    from ecg_tune.search.plan import SearchOptions

    ray.init(num_gpus=1, include_dashboard=False, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    rows = []
    try:
        for trials in shares:
            with tempfile.TemporaryDirectory() as folder:
                options = SearchOptions(out=Path(folder) / "run", max_concurrent=trials, gpus_per_trial=1 / trials,
                                        cpus_per_trial=max(0.1, min(1.0, cpus / trials)), scheduler="fifo")
                pipeline = PipelineOptions(search=options, space=fixed_space(GPU_CONFIG, trials, max_epochs),
                                           refit=None)
                started = time.perf_counter()
                histories = run_pipeline(pipeline, dataset=dataset, log=log).run.histories()
                wall = time.perf_counter() - started
            samples = len(dataset.index("train")) * sum(len(h) for h in histories.values())
            per_trial = [float(h["train_samples_per_s"].mean()) for h in histories.values()]
            rows.append({"trials": trials, "gpu_each": 1 / trials, "wall_s": wall,
                         "aggregate_samples_per_s": samples / wall,
                         "sum_of_trial_samples_per_s": float(np.sum(per_trial))})
            log(f"{trials} trial(s) x {1 / trials:g} GPU: {rows[-1]['aggregate_samples_per_s']:.0f} samples/s "
                f"overall (sum of trials' own rates {rows[-1]['sum_of_trial_samples_per_s']:.0f}/s)")
    finally:
        ray.shutdown()
    return {"gpu_config": GPU_CONFIG, "max_epochs": max_epochs, "rows": rows}


def overhead_table(result: dict) -> str:
    lines = ["| measure | value |", "|---|---:|"]
    for cost in result.get("trial_cost", ()):
        delay = cost["start_to_first_report_s"]
        how = "workers reused" if cost["reuse_actors"] else "a new worker per trial"
        lines += [f"| tiny trials per minute, {how} ({cost['concurrent']} at once, {cost['trials']} trials) | "
                  f"{cost['trials_per_minute']:.0f} |",
                  f"| seconds a tiny trial holds its slot, {how} | {cost['slot_seconds_per_trial']:.1f} s |",
                  f"| trial start to first report, {how}: median / p90 / max | {delay['median']:.2f} / "
                  f"{delay['p90']:.2f} / {delay['max']:.2f} s |"]
    lines.append(f"| dataset arrays (held once in the object store) | {result['dataset_mib']:.0f} MiB |")
    if "copy_probe" in result:
        probe = result["copy_probe"]
        lines.append(f"| private memory a worker adds by fetching the dataset and reading all of it | "
                     f"{probe['added_mib']:.1f} MiB (worker before: {probe['private_before_mib']:.0f} MiB) |")
    for row in result.get("memory", ()):
        lines.append(f"| peak memory (PSS, driver + Ray), {row['concurrent']} trial(s) at once | "
                     f"{row['peak_pss_mib']:.0f} MiB |")
        lines.append(f"| largest private memory (USS) of one worker, {row['concurrent']} trial(s) at once | "
                     f"{row['worker_uss_peak_mib']:.0f} MiB |")
    if "memory" in result:
        lines.append(f"| extra for 4 trials over 1 (3 data copies would be {3 * result['dataset_mib']:.0f} MiB) | "
                     f"{result['extra_mib_4_vs_1']:.0f} MiB |")
    if "searcher" in result:
        from ecg_tune.benchmarks.searcher_cost import searcher_table

        lines += ["", searcher_table(result["searcher"])]
    return "\n".join(lines)


def gpu_table(result: dict) -> str:
    lines = ["| trials on one GPU | GPU each | aggregate samples/s |", "|---:|---:|---:|"]
    lines += [f"| {r['trials']} | {r['gpu_each']:g} | {r['aggregate_samples_per_s']:.0f} |" for r in result["rows"]]
    return "\n".join(lines)
