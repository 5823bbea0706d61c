"""The device costs every trial reports (training/costs.py): parameters against a brute-force count
(a fitted SVM stage's support vectors included), multiply-accumulates against a hand count, the
latency measured on one thread, the estimate before training, and the limits' arithmetic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ecg_tune.config import make_config
from ecg_tune.data import Dataset, prepare
from ecg_tune.models import EcgModel
from ecg_tune.signal.transforms import TRANSFORMS
from ecg_tune.training import costs
from ecg_tune.training.costs import CostLimits, TrialCosts, config_costs, forward_macs, head_size, parameter_count
from ecg_tune.training.loop import fit
from ecg_tune.training.network import Network
from ecg_tune.training.reported import COST_KEYS, FEASIBLE, describe_key, exported, tracked

LENGTH = 256
FAMILIES = {  # a small instance of every model family; cnn_svm with its SVM stage, minirocket with its ridge head
    "simple_cnn": {"model": "simple_cnn", "feature_size": 16},
    "ecg_cnn": {"model": "ecg_cnn", "width": 8},
    "resnet1d": {"model": "resnet1d", "width": 8, "depth": 2},
    "cnn_svm": {"model": "cnn_svm", "feature_size": 16, "svm_max_train": 40},
    "minirocket": {"model": "minirocket", "rocket_head": "ridge", "rocket_features": 168, "rocket_max_dilations": 2},
}


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return prepare("synthetic:60", progress=False)


def trained(dataset: Dataset, options: dict):
    config = make_config({"input_length": LENGTH, "batch_size": 16, "epochs": 1, "augmentation": "none", **options})
    (result,) = list(fit(config, dataset.tensors, dataset.index("train"), dataset.index("val"), device="cpu"))
    return config, result


def brute_force_head(head) -> int:
    """Every number a fitted SVM stage's pipeline holds that a prediction reads."""
    if head is None or head.file is None:
        return 0
    scaler, svc = head.pipeline[0], head.pipeline[-1]
    return (svc.support_vectors_.size + svc.dual_coef_.size + svc.intercept_.size + scaler.mean_.size
            + scaler.scale_.size + 1)  # + the temperature


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cost_keys_on_every_model_family(dataset: Dataset, family: str) -> None:
    config, result = trained(dataset, FAMILIES[family])
    network, head = result.network, result.head
    measured = TrialCosts.measure(network, head, config)
    figures = measured.figures([head], CostLimits())
    assert set(figures) == {*COST_KEYS, FEASIBLE} and figures[FEASIBLE] == 1.0
    brute = sum(p.numel() for p in network.parameters())
    assert figures["n_params"] == brute + brute_force_head(head)
    assert figures["macs"] > 0 and figures["latency_ms"] > 0
    # The estimate before training (on the meta device): the same network, the same counts as the
    # trained network's own forward (a kept-apart head excepted).
    estimate = config_costs(config, LENGTH, len(dataset.tensors.classes))
    assert estimate.n_params == brute and estimate.head_counted == (family != "cnn_svm")
    assert forward_macs(network, features=family == "cnn_svm") == estimate.macs
    if family == "cnn_svm":
        n_sv, n_features = head.pipeline[-1].support_vectors_.shape
        assert head_size(head) > n_sv * n_features > 0
        assert figures["macs"] == estimate.macs + n_features + n_sv * n_features + head.pipeline[-1].dual_coef_.size
    else:
        assert figures["macs"] == estimate.macs
    if family == "minirocket":  # the ridge head is the model's Linear layer: counted once, as parameters
        assert head is not None and head.file is None and head_size(head) == 0
        assert parameter_count(network.model.head) == len(dataset.tensors.classes) * (network.model.feature_dim + 1)


class TinyNet(EcgModel):
    """Conv1d(1 -> 4, k3, 'same') -> flatten -> Linear(4 * L -> 3): MACs by hand."""

    def __init__(self, input_length: int) -> None:
        super().__init__(1, input_length, 3)
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.feature_dim = 4 * input_length
        self.head = nn.Linear(self.feature_dim, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).flatten(1)


def tiny_network(transform: str = "none", length: int = 16) -> Network:
    built = TRANSFORMS.get(transform).build(length, TRANSFORMS.options(transform, {}))
    return Network(built, TinyNet(built.output_shape[1]), length)


def test_macs_of_a_tiny_conv_and_linear_net_by_hand() -> None:
    network = tiny_network()
    conv, linear = 4 * 1 * 3 * 16, 4 * 16 * 3  # out channels x in channels x kernel x length; in x out
    assert forward_macs(network) == conv + linear
    assert forward_macs(network, features=True) == conv
    assert parameter_count(network) == (4 * 3 + 4) + (64 * 3 + 3)
    # The Fourier transform's FFT, which torch's counter leaves out, as 2 n log2 n per series.
    fourier = tiny_network("fourier", 16)
    bins = 16 // 2 + 1
    assert forward_macs(fourier) == 2 * 16 * 4 + 4 * 3 * bins + 4 * bins * 3


def test_latency_is_measured_on_one_thread_and_the_threads_restored() -> None:
    network = tiny_network()
    seen: list[int] = []
    network.model.register_forward_pre_hook(lambda module, args: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        value = costs.latency_ms(network, None, "zscore", warmup=2, repeats=5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert value > 0 and len(seen) == 7 and set(seen) == {1}
    assert network.training  # left as it was found


def test_a_resumed_trial_keeps_its_measurement() -> None:
    measured = TrialCosts(1000, 5000, 1.5)
    assert TrialCosts.from_state(measured.state()) == measured
    assert TrialCosts.from_state(None) is None and TrialCosts.from_state({"network_params": "x"}) is None


def test_limits_say_what_is_broken_and_by_how_much() -> None:
    limits = CostLimits(max_params=20000, max_latency_ms=5.0)
    figures = {"n_params": 30000.0, "macs": 1e9, "latency_ms": 4.0}
    assert limits.violations(figures) == {"n_params": pytest.approx(0.5), "latency_ms": pytest.approx(-0.2)}
    assert not limits.feasible(figures) and limits.broken(figures) == "params 30000 > 20000"
    assert limits.describe() == "params <= 20000, latency_ms <= 5"
    assert limits.before_training and not CostLimits(max_latency_ms=1).before_training and not CostLimits()
    assert limits.feasible({"n_params": 20000.0}) and CostLimits().feasible(figures)
    assert TrialCosts(100, 10, 9.0).figures([None], limits)[FEASIBLE] == 0.0  # too slow


def test_cost_keys_are_declared_exported_and_minimised() -> None:
    from ecg_tune.training.metrics import direction

    for key in (*COST_KEYS, FEASIBLE):
        assert describe_key(key) is not None and exported(key) and tracked(key), key
    assert all(direction(key) == "min" for key in COST_KEYS)
    assert describe_key(FEASIBLE).direction is None and describe_key(FEASIBLE).folds == "min"
