"""`benchmark overhead`, its searcher part (issue 25, item 3): what the searcher costs the driver
per trial as a search grows to a thousand trials and more.

Every searcher here is the one a search runs, built by search/tuner.py's `make_searcher` from the
`full` space fitted to the benchmark's data (its conditional parameters, its start points, TPE's
start-up trials for a capped search), as a subclass that adds up the seconds it spends in each
of Tune's calls (`TimedSearch`) and in its sampler (`TimedSampler`: TPE's own share, storage
reads and writes it makes included).

- **in process** (`searcher_curves`): N trials driven as Tune drives the searcher, without Ray:
  4 trials in flight (each suggested before the oldest is run out and told, so TPE's constant
  liar sees 3 running trials), ASHA's rungs from the space's schedule (a trial below the best
  1/reduction_factor of the values seen at a rung stops there and reaches the searcher as Ray
  sends it: through `on_trial_complete` only). A trial's score is a fixed function of its config
  (`trivial_score`) and costs nothing, so the driver's seconds are the searcher's and this loop's.
  Variants: random and TPE on the in-memory study (TPE also shown every trial, as Optuna does
  without the window of search/optuna_search.py), and both on an sqlite study
  (`--optuna-storage`, a file on the local disk). Per block of trials: driver seconds per
  trial, the searcher's and its sampler's; the driver's resident memory before and at its peak during the
  run (Linux's high-water mark, reset per variant), and the size of the searcher's saved state
  (Tune pickles it at every experiment checkpoint). Ray is not running meanwhile.
- **through Tune** (`through_tune`): fewer trials of a trainable that sleeps 2 ms an epoch,
  through Tune with the same searcher, ASHA (search/rungs.py) and 4 trials at once with workers
  reused: wall seconds per completed trial against the searcher's seconds per trial, which tells
  Ray's part of a trial's driver cost from the searcher's; the driver's peak resident memory.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from ecg_tune.data import Dataset
from ecg_tune.search.adapt import AdaptedSpace, DataFacts, adapt
from ecg_tune.search.optuna_search import MODEL_WINDOW, PruningAwareOptunaSearch
from ecg_tune.search.plan import Plan, SearchOptions, make_plan
from ecg_tune.search.space_file import load_space
from ecg_tune.search.tuner import make_searcher
from ecg_tune.training.reported import TRAINING_ITERATION

CONCURRENT = 4  # trials in flight: the overhead benchmark's cluster has 4 logical CPUs
BLOCK = 100  # trials per point of the cost curve
# name -> (searcher, study in sqlite, TPE's window of trials: None, every trial)
VARIANTS: dict[str, tuple[str, bool, int | None]] = {
    "random": ("random", False, MODEL_WINDOW),
    "tpe": ("optuna", False, MODEL_WINDOW),
    "tpe_every_trial": ("optuna", False, None),
    "random_sqlite": ("random", True, MODEL_WINDOW),
    "tpe_sqlite": ("optuna", True, MODEL_WINDOW),
}
RAY_VARIANTS = ("random", "tpe")
# Per block, per trial: wall ms of the driver, the searcher, its sampler; then the driver thread's
# CPU ms in the same three (CPU time hardly moves when other processes share the cores; wall
# time also holds the waits for the disk of an sqlite study).
BLOCK_KEYS = ("driver_ms_per_trial", "searcher_ms_per_trial", "sampler_ms_per_trial",
              "driver_cpu_ms_per_trial", "searcher_cpu_ms_per_trial", "sampler_cpu_ms_per_trial")
EPOCH_WORK_S = 0.002  # the trainable's "training" per epoch, through Tune


class TimedSampler(BaseSampler):
    """A sampler that hands every call to the search's own and adds up the seconds spent in it
    (`seconds`: wall; `cpu`: this thread's CPU): the sampler's part of the searcher's time (TPE's
    model, with the storage reads and writes it makes itself), apart from the study's bookkeeping
    and storage writes around it."""

    def __init__(self, sampler: BaseSampler) -> None:
        self.sampler, self.seconds, self.cpu = sampler, 0.0, 0.0

    def _timed(self, call: Callable[..., Any], *args: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return call(*args)
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu += time.thread_time() - cpu

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._timed(self.sampler.infer_relative_search_space, study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._timed(self.sampler.sample_relative, study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._timed(self.sampler.sample_independent, study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._timed(self.sampler.before_trial, study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._timed(self.sampler.after_trial, study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


class TimedSearch(PruningAwareOptunaSearch):
    """The search's searcher, adding up the seconds spent in each of Tune's calls to it (wall, per
    call; `cpu`: this thread's CPU, all calls) and counting the calls, and in its sampler
    (`TimedSampler`)."""

    def __init__(self, *, sampler: BaseSampler, **kwargs: Any) -> None:
        self.sampler = TimedSampler(sampler)
        super().__init__(sampler=self.sampler, **kwargs)
        self.seconds = {"suggest": 0.0, "result": 0.0, "complete": 0.0, "save": 0.0}
        self.calls = dict.fromkeys(self.seconds, 0)
        self.cpu = 0.0

    @property
    def results_per_trial(self) -> float:
        """The results that reached the searcher per finished trial (a stopped trial's last one
        comes with its completion): the epochs its trials ran, ASHA's cuts included."""
        return (self.calls["result"] + self.calls["complete"]) / max(1, self.calls["complete"])

    @property
    def busy(self) -> float:
        return sum(self.seconds.values())

    def _timed(self, name: str, call: Callable[..., Any], *args: Any) -> Any:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return call(*args)
        finally:
            self.seconds[name] += time.perf_counter() - started
            self.cpu += time.thread_time() - cpu
            self.calls[name] += 1

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return self._timed("suggest", super().suggest, trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._timed("result", super().on_trial_result, trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self._timed("complete", super().on_trial_complete, trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        self._timed("save", super().save, checkpoint_path)


def trivial_score(config: dict[str, Any], epoch: int) -> float:
    """A trial's validation score at an epoch, fixed by its config: a model and transform effect,
    a best learning rate, the config's own noise, rising with the epochs (something for TPE to
    learn, at no cost)."""
    model = {"resnet1d": 0.15, "minirocket": 0.12, "ecg_cnn": 0.08}.get(str(config.get("model")), 0.0)
    transform = 0.05 if config.get("transform") == "wavelet" else 0.0
    rate = -0.05 * abs(math.log10(float(config.get("lr", 2e-3))) + 2.7)
    noise = zlib.crc32(json.dumps(config, sort_keys=True, default=str).encode()) / 2**32 * 0.1
    return (0.45 + model + transform + rate + noise) * (1 - 0.5 * 0.85 ** epoch)


def rungs(plan: Plan) -> list[int]:
    """ASHA's rungs (epochs) below the plan's epoch cap."""
    found, rung = [], plan.grace_period
    while rung < plan.max_epochs:
        found.append(int(rung))
        rung = math.ceil(rung * plan.reduction_factor)
    return found


def full_space(dataset: Dataset) -> AdaptedSpace:
    return adapt(load_space("full"), DataFacts.from_dataset(dataset))


def search_setup(space: AdaptedSpace, variant: str, trials: int, folder: Path) -> tuple[Plan, SearchOptions]:
    """The plan and options of a capped search of `trials` with the variant's searcher and study."""
    searcher, sqlite, _ = VARIANTS[variant]
    options = SearchOptions(out=folder / "run", num_samples=trials, searcher=searcher,  # type: ignore[arg-type]
                            optuna_storage=f"sqlite:///{folder / 'study.db'}" if sqlite else None)
    return make_plan(options, space, CONCURRENT, 0), options


def timed_searcher(plan: Plan, options: SearchOptions, space: AdaptedSpace, variant: str) -> TimedSearch:
    build = functools.partial(TimedSearch, model_window=VARIANTS[variant][2])
    return make_searcher(plan, options, space, build)


def simulated_search(searcher: TimedSearch, plan: Plan, trials: int,
                     log: Callable[[str], None], name: str) -> list[dict[str, float]]:
    """Drive the searcher as Tune does, `CONCURRENT` trials in flight and ASHA's rungs; per block
    of `BLOCK` suggested trials, driver and searcher seconds per trial."""
    cuts = rungs(plan)
    seen: dict[int, list[float]] = {rung: [] for rung in cuts}  # scores recorded at each rung
    keep = 1 / plan.reduction_factor
    sign = 1.0 if plan.mode == "max" else -1.0
    running: deque[tuple[str, dict[str, Any]]] = deque()

    def run_out(trial_id: str, config: dict[str, Any]) -> None:
        for epoch in range(1, plan.max_epochs + 1):
            score = trivial_score(config, epoch)
            result = {plan.metric: sign * score, TRAINING_ITERATION: epoch}
            if epoch in cuts:
                values = seen[epoch]
                values.append(score)
                if len(values) >= plan.reduction_factor and score < np.quantile(values, 1 - keep):
                    searcher.on_trial_complete(trial_id, result)  # Ray skips on_trial_result for it
                    return
            searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)

    def clocks() -> tuple[float, ...]:
        return (time.perf_counter(), searcher.busy, searcher.sampler.seconds, time.thread_time(), searcher.cpu,
                searcher.sampler.cpu)

    blocks: list[dict[str, float]] = []
    since = clocks()
    for number in range(1, trials + 1):
        trial_id = f"t{number:05d}"
        config = searcher.suggest(trial_id)
        running.append((trial_id, config or {}))
        if len(running) == CONCURRENT:
            run_out(*running.popleft())
        if number % BLOCK == 0 or number == trials:
            now, size = clocks(), number - (len(blocks) * BLOCK)
            ms = [1000 * (a - b) / size for a, b in zip(now, since, strict=True)]
            blocks.append(dict(zip(BLOCK_KEYS, ms, strict=True), trials=number))
            log(f"  {name}: {number} trials, {ms[0]:.1f} ms per trial (searcher {ms[1]:.1f}, its sampler "
                f"{ms[2]:.1f}; CPU {ms[3]:.1f} / {ms[4]:.1f} / {ms[5]:.1f})")
            since = now
    while running:
        run_out(*running.popleft())
    return blocks


def searcher_curves(dataset: Dataset, trials: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every variant in process (no Ray): its cost curve, totals and the driver's peak memory."""
    import gc

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
    space = full_space(dataset)
    results: dict[str, Any] = {}
    for name in VARIANTS:
        gc.collect()
        with tempfile.TemporaryDirectory() as folder:
            plan, options = search_setup(space, name, trials, Path(folder))
            before = _resident_mib(peak=False)
            _reset_peak()
            started = time.perf_counter()
            searcher = timed_searcher(plan, options, space, name)
            blocks = simulated_search(searcher, plan, trials, log, name)
            wall = time.perf_counter() - started
            results[name] = {
                "blocks": blocks, "wall_s": wall, "searcher_s": dict(searcher.seconds),
                "driver_rss_before_mib": before, "driver_rss_peak_mib": _resident_mib(peak=True),
                "saved_state_mib": _saved_mib(searcher, Path(folder)),
                # Trials are numbered from 0 and the newest is always in view (a window hides
                # old ones): the Optuna trials, repeats answered from memory included.
                "study_trials": 1 + max(t.number for t in searcher.study.get_trials(deepcopy=False)),
                "results_per_trial": searcher.results_per_trial,
                "startup_trials": plan.startup_trials, "model_window": VARIANTS[name][2]}
            del searcher
        log(f"{name}: {trials} trials in {wall:.0f} s, last block {blocks[-1]['driver_ms_per_trial']:.1f} ms "
            f"per trial; driver RSS {results[name]['driver_rss_before_mib']:.0f} MiB, peak "
            f"{results[name]['driver_rss_peak_mib']:.0f} MiB")
    end = {name: r["blocks"][-1] for name, r in results.items()}
    # TPE's added cost at the end of the run: the driver's time (wall and CPU) against random's on
    # the same storage (and sqlite's against the in-memory random), and the sampler's own time.
    added = {name: {"driver_minus_random_ms": end[name]["driver_ms_per_trial"] - end[baseline]["driver_ms_per_trial"],
                    "driver_cpu_minus_random_ms": (end[name]["driver_cpu_ms_per_trial"]
                                                   - end[baseline]["driver_cpu_ms_per_trial"]),
                    "sampler_ms": end[name]["sampler_ms_per_trial"],
                    "sampler_cpu_ms": end[name]["sampler_cpu_ms_per_trial"]}
             for name, baseline in (("tpe", "random"), ("tpe_every_trial", "random"),
                                    ("tpe_sqlite", "random_sqlite"))}
    added["tpe_sqlite"]["driver_minus_memory_random_ms"] = (end["tpe_sqlite"]["driver_ms_per_trial"]
                                                            - end["random"]["driver_ms_per_trial"])
    return {"trials": trials, "concurrent": CONCURRENT, "block": BLOCK, "rungs": rungs(plan),
            "max_epochs": plan.max_epochs, "model_window": MODEL_WINDOW, "variants": results,
            "tpe_added_at_end": added}


def _reset_peak() -> None:
    """Start the process's peak resident memory afresh (Linux; elsewhere the peak is since start)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _resident_mib(peak: bool) -> float:
    """The driver's resident memory now, or at its peak (Linux's VmHWM; the current one elsewhere)."""
    import psutil

    if peak:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
    return psutil.Process().memory_info().rss / 2**20


def _saved_mib(searcher: TimedSearch, folder: Path) -> float:
    """The size of the searcher's state as Tune saves it."""
    path = folder / "searcher-state.pkl"
    searcher.save(str(path))
    return path.stat().st_size / 2**20


def _trivial_trial(config: dict[str, Any], max_epochs: int, metric: str, sign: float) -> None:
    from ray import tune

    for epoch in range(1, max_epochs + 1):
        time.sleep(EPOCH_WORK_S)
        tune.report({metric: sign * trivial_score(config, epoch)})


def through_tune(dataset: Dataset, trials: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Random and TPE through Tune (Ray already started, 4 CPUs): wall and searcher seconds per trial."""
    space = full_space(dataset)
    rows = {name: _tune_run(space, name, trials) for name in RAY_VARIANTS}
    for name, row in rows.items():
        log(f"through Tune, {name}: {row['trials']} trials in {row['wall_s']:.0f} s "
            f"({row['trials_per_minute']:.0f}/min), searcher {row['searcher_ms_per_trial']:.1f} ms of "
            f"{row['wall_ms_per_trial']:.0f} ms per trial")
    return {"trials": trials, "concurrent": CONCURRENT, "epoch_work_s": EPOCH_WORK_S, "variants": rows}


def _tune_run(space: AdaptedSpace, name: str, trials: int) -> dict[str, Any]:
    from ray import tune

    from ecg_tune.search.rungs import RungASHA

    with tempfile.TemporaryDirectory() as folder:
        plan, options = search_setup(space, name, trials, Path(folder))
        searcher = timed_searcher(plan, options, space, name)
        done: list[tuple[float, float]] = []  # per completed trial: when, the searcher's seconds so far

        class Clock(tune.Callback):
            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                done.append((time.perf_counter(), searcher.busy))

        trainable = tune.with_parameters(_trivial_trial, max_epochs=plan.max_epochs, metric=plan.metric,
                                         sign=1.0 if plan.mode == "max" else -1.0)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            tune_config=tune.TuneConfig(
                metric=plan.metric, mode=plan.mode, num_samples=trials, search_alg=searcher,
                scheduler=RungASHA(time_attr=TRAINING_ITERATION, max_t=plan.max_epochs,
                                   grace_period=plan.grace_period, reduction_factor=plan.reduction_factor,
                                   metric=plan.metric, mode=plan.mode),
                max_concurrent_trials=CONCURRENT, reuse_actors=True),
            run_config=tune.RunConfig(storage_path=folder, name="searcher", callbacks=[Clock()], verbose=0))
        _reset_peak()
        started = time.perf_counter()
        tuner.fit()
        wall = time.perf_counter() - started
    edges = [(started, 0.0), *done[BLOCK - 1::BLOCK]]
    blocks = [{"trials": BLOCK * i, "wall_ms_per_trial": 1000 * (edges[i][0] - edges[i - 1][0]) / BLOCK,
               "searcher_ms_per_trial": 1000 * (edges[i][1] - edges[i - 1][1]) / BLOCK}
              for i in range(1, len(edges))]
    count = max(1, len(done))
    return {"trials": len(done), "wall_s": wall, "trials_per_minute": len(done) / wall * 60,
            "wall_ms_per_trial": 1000 * wall / count, "searcher_ms_per_trial": 1000 * searcher.busy / count,
            "sampler_ms_per_trial": 1000 * searcher.sampler.seconds / count,
            "searcher_cpu_ms_per_trial": 1000 * searcher.cpu / count,
            "searcher_s": dict(searcher.seconds), "results_per_trial": searcher.results_per_trial, "blocks": blocks,
            "driver_rss_peak_mib": _resident_mib(peak=True)}


def searcher_table(result: dict[str, Any]) -> str:
    """The cost curve (driver ms per trial, and the sampler's, by block), the totals, TPE's added
    cost at the end, then the run through Tune."""
    curves = result["curves"]
    variants = curves["variants"]
    lines = ["| trials | " + " | ".join(f"{n}: driver / sampler ms (sampler CPU)" for n in variants) + " |",
             "|---:|" + "---:|" * len(variants)]
    for i, block in enumerate(next(iter(variants.values()))["blocks"]):
        cells = [f"{v['blocks'][i]['driver_ms_per_trial']:.1f} / {v['blocks'][i]['sampler_ms_per_trial']:.1f} "
                 f"({v['blocks'][i]['sampler_cpu_ms_per_trial']:.1f})" for v in variants.values()]
        lines.append(f"| {block['trials']} | " + " | ".join(cells) + " |")
    lines += ["", "| variant | Optuna trials | results per trial | wall s | driver RSS before / peak, MiB | "
                  "saved searcher state MiB |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {n} | {v['study_trials']} | {v['results_per_trial']:.1f} | {v['wall_s']:.0f} | "
              f"{v['driver_rss_before_mib']:.0f} / {v['driver_rss_peak_mib']:.0f} | {v['saved_state_mib']:.1f} |"
              for n, v in variants.items()]
    lines += ["", "| TPE at the last block | driver ms over random (same storage): wall / CPU | sampler ms: "
                  "wall / CPU |", "|---|---:|---:|"]
    lines += [f"| {n} | {v['driver_minus_random_ms']:.1f} / {v['driver_cpu_minus_random_ms']:.1f} | "
              f"{v['sampler_ms']:.1f} / {v['sampler_cpu_ms']:.1f} |" for n, v in curves["tpe_added_at_end"].items()]
    tuned = result.get("through_tune")
    if tuned:
        lines += ["", "| through Tune | trials | results per trial | trials/min | wall ms per trial | "
                      "searcher ms per trial (CPU) | sampler ms per trial | driver peak RSS MiB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {n} | {v['trials']} | {v['results_per_trial']:.1f} | {v['trials_per_minute']:.0f} | "
                  f"{v['wall_ms_per_trial']:.0f} | "
                  f"{v['searcher_ms_per_trial']:.1f} ({v['searcher_cpu_ms_per_trial']:.1f}) | "
                  f"{v['sampler_ms_per_trial']:.1f} | "
                  f"{v['driver_rss_peak_mib']:.0f} |" for n, v in tuned["variants"].items()]
    return "\n".join(lines)
