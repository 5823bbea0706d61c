"""What a configured network costs on a device: its parameters, its multiply-accumulates per record
and its latency at batch 1 on one thread; the limits a search may put on them (issue 26).

Three figures, reported by every trial (search/trainable.py) and declared in training/reported.py:

* `n_params`: the network's parameters (transform + model: every `nn.Parameter`, buffers not
  counted: BatchNorm's running statistics, minirocket's fixed kernels and fitted biases, the
  wavelet's filters are constants a device folds or keeps, as published counts leave them out),
  plus the size of a fitted head kept apart from the network: cnn_svm's SVM stage holds its
  support vectors x features, its dual coefficients and intercepts, and the scaler's mean and
  scale (`head_size`). A head fitted into the model (minirocket's ridge head) is its Linear
  layer's weight and bias, already among the parameters.
* `macs`: multiply-accumulates of one record at the trial's input length (batch 1), counted by
  torch's FlopCounterMode (FLOPs / 2) over the path a device runs: the transform (the wavelet's
  matrix products; the Fourier transform's FFT, which torch does not count, as 2 n log2 n per
  series, `_FftMacs`) and the model, its own Linear head replaced by a kept-apart head's cost
  (the scaler, one kernel row per support vector, the dual sums: `head_macs`). Element-wise
  operations (activations, BatchNorm, pooling, comparisons) are not multiply-accumulates.
* `latency_ms`: the median time of one record through that whole path (`latency_ms`): z-scoring
  of the window (for `normalisation: zscore`), transform, model, head, softmax, at batch 1 on
  one thread (torch's and the BLAS pools' thread counts are set to 1 inside and restored after),
  after `WARMUP` runs, over `REPEATS` timed runs or `TIME_CAP` seconds, whichever ends first.

`config_costs` estimates `n_params` and `macs` before training, from the config alone (the
network is built on PyTorch's meta device: shapes only, tens of milliseconds): what keeps
infeasible configurations from being trained. A head kept apart is fitted by training, so its
size is unknown then: the estimate counts the network only (`Costs.head_counted` False), and such
a trial's limits are checked on what it reports once its head is fitted (its `feasible`).

`CostLimits` holds a search's limits (`--max-params`, `--max-macs`, `--max-latency-ms`) and says
whether figures meet them (`feasible`), by how much they break them (`violations`, what Optuna's
constraints are told) and in words (`broken`, `describe`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from ecg_tune.config import TrainConfig
from ecg_tune.models.head import FittedHead
from ecg_tune.training.network import Network, build_network
from ecg_tune.training.reported import COST_KEYS, FEASIBLE, LATENCY_MS, MACS, N_PARAMS

__all__ = ["COST_KEYS", "FEASIBLE", "CostLimits", "Costs", "TrialCosts", "config_costs", "head_macs", "head_size",
           "forward_macs", "latency_ms", "parameter_count"]

# Latency: untimed runs first (allocator, caches, lazy initialisation), then the timed ones, or as
# many as fit in TIME_CAP seconds (at least MIN_REPEATS): a trial whose whole run is one fit
# (minirocket, ~100 ms a record at 10,000 features) pays about a second, not REPEATS of them. The
# median: a run interrupted by another process on the worker's core is an outlier.
WARMUP, REPEATS, MIN_REPEATS, TIME_CAP = 5, 20, 3, 1.0


@dataclass(frozen=True)
class Costs:
    """A network's figures; `latency_ms` None when not measured (an estimate)."""

    n_params: int
    macs: int
    latency_ms: float | None = None
    # False: a head kept apart from the network was not fitted yet and is not counted (an estimate).
    head_counted: bool = True

    def reported(self) -> dict[str, float]:
        """The figures as a trial reports them (numbers; latency only when measured)."""
        found = {N_PARAMS: float(self.n_params), MACS: float(self.macs)}
        if self.latency_ms is not None:
            found[LATENCY_MS] = float(self.latency_ms)
        return found


# The limit of each cost key, as SearchSettings and the command line name it.
LIMITED = {"max_params": N_PARAMS, "max_macs": MACS, "max_latency_ms": LATENCY_MS}
_WORDS = {N_PARAMS: "params", MACS: "MACs", LATENCY_MS: "latency_ms"}


@dataclass(frozen=True)
class CostLimits:
    """A search's limits on its trials' costs (None: no limit)."""

    max_params: int | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None

    def items(self) -> list[tuple[str, float]]:
        """(cost key, limit) of each limit set."""
        return [(key, float(getattr(self, name))) for name, key in LIMITED.items() if getattr(self, name) is not None]

    def __bool__(self) -> bool:
        return bool(self.items())

    @property
    def before_training(self) -> bool:
        """Whether a limit can be checked on the config alone (parameters, MACs)."""
        return self.max_params is not None or self.max_macs is not None

    def checked_before_training(self) -> CostLimits:
        """The limits a config's estimate is checked against (the latency is the trial's to measure)."""
        return CostLimits(max_params=self.max_params, max_macs=self.max_macs)

    def violations(self, figures: Mapping[str, float]) -> dict[str, float]:
        """Each limited figure present in `figures` as its relative excess over the limit (<= 0:
        within it), the way Optuna's constraints are told (`Trial.set_constraint`)."""
        return {key: float(figures[key]) / limit - 1.0 for key, limit in self.items()
                if figures.get(key) is not None and not math.isnan(float(figures[key]))}

    def feasible(self, figures: Mapping[str, float]) -> bool:
        """Whether every limited figure present in `figures` is within its limit."""
        return all(excess <= 0 for excess in self.violations(figures).values())

    def broken(self, figures: Mapping[str, float]) -> str:
        """The limits `figures` break, in words ("" when none)."""
        limits = dict(self.items())
        return ", ".join(f"{_WORDS[key]} {_number(float(figures[key]))} > {_number(limits[key])}"
                         for key, excess in self.violations(figures).items() if excess > 0)

    def describe(self) -> str:
        """The limits in words, e.g. "params <= 20000, latency_ms <= 5"."""
        return ", ".join(f"{_WORDS[key]} <= {_number(limit)}" for key, limit in self.items())


def _number(value: float) -> str:
    return f"{value:.0f}" if value == int(value) and abs(value) < 1e15 else f"{value:.4g}"


# -- parameters ---------------------------------------------------------------------------------

def parameter_count(network: torch.nn.Module) -> int:
    """Every parameter of `network` (buffers not counted: see the module docstring)."""
    return sum(p.numel() for p in network.parameters())


def _kept_apart(head: FittedHead | None) -> bool:
    """Whether `head` replaces the network's own output (None or a head in the model: no)."""
    return head is not None and head.file is not None


def _svm_parts(head: FittedHead) -> tuple[int, int, int, int] | None:
    """(support vectors, features, dual coefficients, intercepts) of a fitted SVM stage kept
    apart (models/svm.py: its scikit-learn pipeline), else None."""
    pipeline = getattr(head, "pipeline", None)
    svc = None if pipeline is None else pipeline[-1]
    if svc is None or getattr(svc, "support_vectors_", None) is None:
        return None
    n_sv, n_features = (int(n) for n in np.shape(svc.support_vectors_))
    return n_sv, n_features, int(np.size(svc.dual_coef_)), int(np.size(svc.intercept_))


def head_size(head: FittedHead | None) -> int:
    """The numbers a fitted head kept apart from the network holds (0 for none, or for a head in
    the model, whose weights are parameters): an SVM stage's support vectors x features, dual
    coefficients, intercepts, its scaler's mean and scale and its temperature; a single-class
    stage (a constant answer) its class priors; another kept-apart head its saved size in
    float32 words."""
    if head is None or not _kept_apart(head):
        return 0
    parts = _svm_parts(head)
    if parts is not None:
        n_sv, n_features, dual, intercepts = parts
        return n_sv * n_features + dual + intercepts + 2 * n_features + 1
    pipeline = getattr(head, "pipeline", None)
    if pipeline is not None:  # a constant answer: the scaler and the class priors
        priors = getattr(pipeline[-1], "class_prior_", ())
        return 2 * int(getattr(pipeline[0], "n_features_in_", 0)) + int(np.size(priors))
    return len(head.to_bytes()) // 4


# -- multiply-accumulates -----------------------------------------------------------------------

class _FftMacs(TorchFunctionMode):
    """Counts torch's FFTs, which FlopCounterMode leaves out: 2 n log2 n multiply-accumulates per
    series of n samples (a radix-2 real FFT's n/2 log2 n complex products, 4 real ones each)."""

    FFTS = (torch.fft.rfft, torch.fft.fft)

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in self.FFTS:
            x = args[0]
            size = kwargs.get("n", args[1] if len(args) > 1 else None)  # fft(input, n=None, dim=-1)
            dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
            n = int(size) if size else int(x.shape[dim])
            series = x.numel() // max(1, int(x.shape[dim]))
            self.macs += series * 2 * n * max(1, math.ceil(math.log2(max(n, 2))))
        return func(*args, **kwargs)


def head_macs(head: FittedHead | None) -> int:
    """Multiply-accumulates of a fitted head kept apart, per record: an SVM stage's scaling (one
    per feature), RBF kernel (a squared distance to each support vector) and dual sums (one per
    dual coefficient); 0 for none or for a head in the model (counted in its forward)."""
    if head is None or not _kept_apart(head):
        return 0
    parts = _svm_parts(head)
    if parts is None:
        return 0
    n_sv, n_features, dual, _ = parts
    return n_features + n_sv * n_features + dual


def _record(network: Network) -> torch.Tensor:
    """A fixed pseudo-random record window (1, input_length) on the network's device."""
    x = torch.randn(1, network.input_length, generator=torch.Generator().manual_seed(0))
    return x.to(_device(network))


def _device(network: torch.nn.Module) -> torch.device:
    for tensor in (*network.parameters(), *network.buffers()):
        return tensor.device
    return torch.device("cpu")


def forward_macs(network: Network, features: bool = False) -> int:
    """Multiply-accumulates of one record's forward through `network` (transform + model; up to
    the model's features when `features`: a head kept apart takes them, its own are `head_macs`)."""
    x = _record(network)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, _FftMacs() as ffts:
            network.features(x) if features else network(x)
    finally:
        network.train(was_training)
    return int(counter.get_total_flops()) // 2 + ffts.macs


# -- latency ------------------------------------------------------------------------------------

@contextmanager
def one_thread() -> Iterator[None]:
    """torch, and the BLAS and OpenMP pools numpy and scikit-learn use, on one thread; restored after."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)


def _predictor(network: Network, head: FittedHead | None, normalisation: str) -> Any:
    """One record window (1, L) -> class probabilities, as a device runs it."""
    apart = _kept_apart(head)

    def predict(x: torch.Tensor) -> Any:
        if normalisation == "zscore":  # the window's own statistics: a device sees no data set
            x = (x - x.mean()) / x.std().clamp(min=1e-8)
        if apart:
            assert head is not None
            return head.predict_proba(network.features(x).numpy())
        return torch.softmax(network(x), dim=-1)

    return predict


def latency_ms(network: Network, head: FittedHead | None, normalisation: str = "zscore", *,
               warmup: int = WARMUP, repeats: int = REPEATS, time_cap: float = TIME_CAP) -> float:
    """Median milliseconds of one record at batch 1 on one CPU thread (module docstring); a
    network on another device is measured on a CPU copy."""
    if _device(network).type != "cpu":
        import copy

        network = copy.deepcopy(network).to("cpu")
    predict = _predictor(network, head, normalisation)
    x = _record(network)
    was_training = network.training
    network.eval()
    times: list[float] = []
    try:
        with one_thread(), torch.inference_mode():
            for _ in range(warmup):
                predict(x)
            deadline = time.perf_counter() + time_cap
            while len(times) < repeats and (len(times) < MIN_REPEATS or time.perf_counter() < deadline):
                started = time.perf_counter()
                predict(x)
                times.append(time.perf_counter() - started)
    finally:
        network.train(was_training)
    return 1000.0 * statistics.median(times)


# -- together -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialCosts:
    """What a trial measures once, at its first epoch (after any head is fitted): its network's
    parameters and MACs without a kept-apart head, and the latency of the whole path with fold
    0's head. A kept-apart head is refitted every epoch (cnn_svm's SVM stage) and its size
    changes with its support vectors, so `figures` adds the current heads' (cheap: attributes of
    the fitted head), averaged over a cross-validated trial's folds; the latency is the first fit's."""

    network_params: int
    network_macs: int
    latency_ms: float

    @classmethod
    def measure(cls, network: Network, head: FittedHead | None, config: TrainConfig) -> TrialCosts:
        """The costs of `network` (built from `config`) with its fitted `head`. The MACs depend on
        shapes only, so they are counted on the meta device (`config_costs`, the same network for
        the same input length and classes): counting on the real network runs every operation
        through Python (measured: 4-5 s for a default minirocket, against 0.2 s)."""
        estimate = config_costs(config, network.input_length, network.model.n_classes)
        return cls(parameter_count(network), estimate.macs, latency_ms(network, head, config.normalisation))

    def figures(self, heads: Sequence[FittedHead | None], limits: CostLimits | None = None) -> dict[str, float]:
        """The reported keys: the costs with `heads` (one per fold) and whether they meet `limits`."""
        costs = Costs(self.network_params + round(float(np.mean([head_size(h) for h in heads] or [0]))),
                      self.network_macs + round(float(np.mean([head_macs(h) for h in heads] or [0]))),
                      self.latency_ms)
        figures = costs.reported()
        figures[FEASIBLE] = float(limits is None or limits.feasible(figures))
        return figures

    def state(self) -> dict[str, float]:
        """What a checkpoint keeps (pass back to `from_state`)."""
        return {"network_params": self.network_params, "network_macs": self.network_macs,
                "latency_ms": self.latency_ms}

    @classmethod
    def from_state(cls, state: object) -> TrialCosts | None:
        """The costs a checkpoint kept; None when it has none (written before them) or they are damaged."""
        if not isinstance(state, Mapping):
            return None
        try:
            return cls(int(state["network_params"]), int(state["network_macs"]), float(state["latency_ms"]))
        except (KeyError, TypeError, ValueError):
            return None


def config_costs(config: TrainConfig, input_length: int, n_classes: int) -> Costs:
    """The estimate before training: `n_params` and `macs` of the network `config` describes for
    inputs of `input_length` samples and `n_classes` classes. A head kept apart, fitted only by
    training, is not counted (`head_counted` False): its trial reports its size once fitted.

    The network is built on PyTorch's meta device (shapes only: no weights allocated or
    initialised, no arithmetic in the forward), tens of milliseconds for any model here; a
    network whose forward has an operation with a data-dependent shape (minirocket's longest-run
    pooling) is built and run on the CPU instead. torch's global random state is left as it was."""
    try:
        return _built_costs(config, input_length, n_classes, torch.device("meta"))
    except (NotImplementedError, RuntimeError):
        return _built_costs(config, input_length, n_classes, torch.device("cpu"))


def _built_costs(config: TrainConfig, input_length: int, n_classes: int, device: torch.device) -> Costs:
    with torch.random.fork_rng(devices=[]), device:
        network = build_network(config, input_length, n_classes)
    # A head kept apart replaces the network's own output layer (the device computes the features).
    apart = _kept_apart(network.model.fitted_head())
    return Costs(parameter_count(network), forward_macs(network, features=apart), head_counted=not apart)
