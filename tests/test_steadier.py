"""Steadier trials (training/loop.py): the cosine learning-rate schedule and the moving average of
the weights (`ema_decay`), each off by default.

Resumed runs are compared bit for bit (torch.equal): a run resumed at epoch k loads the raw
weights, the optimiser, the average and its update count exactly, and every random draw derives
from (seed, epoch), so on one CPU with the same thread count nothing differs. The average is
compared with its float64 recurrence at 1e-6: the loop's update is a lerp, avg + (1 - d) * (w -
avg), which rounds differently from d * avg + (1 - d) * w in float32.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.models.minirocket import MiniRocket
from ecg_tune.models.svm import SVMStage
from ecg_tune.search.space_file import load_space
from ecg_tune.training import loop
from ecg_tune.training.evaluate import aggregate, record_probabilities, window_outputs
from ecg_tune.training.loop import fit
from ecg_tune.training.metrics import log_loss

CPU = torch.device("cpu")
# Keys whose values are wall times: they differ between any two runs.
TIMINGS = ("train_samples_per_s", "epoch_seconds")


@pytest.fixture(scope="module")
def dataset():
    return prepare("synthetic:60", progress=False)


def tiny(**values):
    """A small, quick config: short inputs, simple_cnn unless a test needs BatchNorm's buffers."""
    return make_config({"model": "simple_cnn", "input_length": 600, "batch_size": 16, "epochs": 3,
                        "augmentation": "none", "seed": 3, **values})


# A narrow ecg_cnn: it has BatchNorm, whose running statistics are averaged too.
WITH_BUFFERS = {"model": "ecg_cnn", "width": 8}


# The records a run trains and validates on unless told: few, so that an epoch is quick.
TRAIN_RECORDS, VAL_RECORDS = 24, 5


def run(config, dataset, *, train=None, val="val", until: int | None = None, **kwargs) -> list:
    """Every epoch's result (up to epoch `until`: a run interrupted there), each a snapshot: the
    loop yields its live network and a state that aliases it, which the next epoch would change.
    `val`: "val" (the first VAL_RECORDS of that part), indices, or None."""
    train_index = dataset.index("train")[:TRAIN_RECORDS] if train is None else train
    val_index = dataset.index("val")[:VAL_RECORDS] if isinstance(val, str) else val
    results = fit(config, dataset.tensors, train_index, val_index, device="cpu", **kwargs)
    return [dataclasses.replace(r, network=copy.deepcopy(r.network), _state=saved(r.state()))
            for r in itertools.islice(results, until)]


def saved(state: dict) -> dict:
    """A copy of a state, as the trainable writes and reads it back (a resumed run's optimiser
    would otherwise step the tensors of the state it was given)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in network.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def without_timings(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key not in TIMINGS}


def cosine(lr: float, floor: float, epochs: int) -> list[float]:
    """The schedule as the issue states it: epoch e of E at lr_floor + (lr - lr_floor) * (1 + cos(pi e / E)) / 2."""
    lr_floor = lr * floor
    return [lr_floor + (lr - lr_floor) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]


# -- configuration ---------------------------------------------------------------------------

def test_the_keys_are_off_by_default_and_validated() -> None:
    config = make_config({})
    assert (config.lr_scheduler, config.cosine_floor, config.ema_decay) == ("none", 0.01, 0.0)
    make_config({"lr_scheduler": "cosine", "cosine_floor": 0.0, "ema_decay": 0.999})
    for key, value in (("cosine_floor", 1.0), ("cosine_floor", -0.1), ("ema_decay", 1.0), ("ema_decay", -0.5)):
        with pytest.raises(ConfigError, match=rf"{key} must be in \[0, 1\), got {value}"):
            make_config({key: value})
    with pytest.raises(ConfigError, match="lr_scheduler"):
        make_config({"lr_scheduler": "cosine_restarts"})


SPACE = """
lr_scheduler: {type: choice, values: [none, cosine]}
cosine_floor: {type: float, low: 0.0, high: 0.1, when: {lr_scheduler: cosine}}
ema_decay: {type: float, low: 0.9, high: HIGH}
"""


def test_a_space_file_may_search_them(tmp_path: Path) -> None:
    path = tmp_path / "steady.yaml"
    path.write_text(SPACE.replace("HIGH", "0.999"))
    space = load_space(path)
    assert list(space.parameters) == ["lr_scheduler", "cosine_floor", "ema_decay"]
    path.write_text(SPACE.replace("HIGH", "1.0"))
    with pytest.raises(ConfigError, match="ema_decay"):
        load_space(path)


# -- cosine ----------------------------------------------------------------------------------

@pytest.mark.parametrize("lr,floor,epochs", [(1e-3, 0.01, 5), (3e-2, 0.0, 4), (5e-4, 0.5, 1)])
def test_cosine_rates_follow_the_formula(dataset, lr: float, floor: float, epochs: int) -> None:
    config = tiny(lr=lr, lr_scheduler="cosine", cosine_floor=floor, epochs=epochs)
    results = run(config, dataset, train=dataset.index("train")[:8], val=None)
    assert [r.metrics["lr"] for r in results] == pytest.approx(cosine(lr, floor, epochs), rel=1e-12)
    assert [r.metrics["lr"] for r in results] == results[-1].state()["lr_history"]


def test_a_replayed_schedule_overrides_cosine(dataset) -> None:
    config = tiny(lr_scheduler="cosine")
    results = run(config, dataset, train=dataset.index("train")[:8], val=None, lr_schedule=[2e-3, 2e-3])
    assert [r.metrics["lr"] for r in results] == [2e-3, 2e-3]


def test_cosine_resumed_mid_run_repeats_the_run(dataset) -> None:
    config = tiny(lr_scheduler="cosine", epochs=4)
    straight = run(config, dataset)
    resumed = run(config, dataset, resume=saved(straight[1].state()))  # interrupted after epoch 2
    assert [r.metrics["lr"] for r in resumed] == [r.metrics["lr"] for r in straight[2:]]
    for got, expected in zip(resumed, straight[2:], strict=True):
        assert_same_weights(weights(got.network), weights(expected.network))


# -- the moving average of the weights ---------------------------------------------------------

def test_the_average_follows_the_recurrence_after_every_step(dataset, monkeypatch) -> None:
    decay = 0.8
    seen = []  # (raw weights, average) after each step
    update = loop.WeightAverage.update

    def spy(self):
        update(self)
        raw = [t.double() for t in self._averaged[1]]
        seen.append((raw, [t.double() for t in self._averaged[0]]))

    monkeypatch.setattr(loop.WeightAverage, "update", spy)
    config = tiny(**WITH_BUFFERS, ema_decay=decay, epochs=2)
    results = run(config, dataset)
    assert len(seen) == 4  # 2 steps an epoch
    expected = None
    for raw, average in seen:
        # The first update copies: the random initial weights never enter the average.
        if expected is None:
            expected = raw
        else:
            expected = [decay * e + (1 - decay) * w for e, w in zip(expected, raw, strict=True)]
        for got, want in zip(average, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # The running statistics are averaged too; the batch counter is copied, not averaged.
    model, raw = results[-1].network.model, results[-1].state()["network"]
    counts = [key for key in raw if key.endswith("num_batches_tracked")]
    assert counts and all(model.state_dict()[key.removeprefix("model.")] == raw[key] == 4 for key in counts)
    running = [key for key in raw if key.endswith("running_mean")]
    assert running and not torch.equal(model.state_dict()[running[0].removeprefix("model.")], raw[running[0]])


def test_an_epoch_is_validated_with_the_average(dataset) -> None:
    config = tiny(ema_decay=0.9, epochs=2)
    result = run(config, dataset)[-1]
    raw = result.state()["network"]
    assert not all(torch.equal(value, raw[key]) for key, value in result.network.state_dict().items())
    val = dataset.index("val")[:VAL_RECORDS]
    probabilities, own = record_probabilities(result.network, None, dataset.tensors, val, "zscore", 0.5, CPU)
    np.testing.assert_array_equal(result.val_probabilities, probabilities)
    assert result.metrics["val_loss"] == float(log_loss(own, dataset.tensors.labels[val]))


def test_ema_decay_zero_is_todays_run(dataset) -> None:
    for values in ({}, {"lr_scheduler": "plateau", "plateau_patience": 0}):
        plain = run(tiny(epochs=2, **values), dataset)
        zero = run(tiny(epochs=2, ema_decay=0.0, cosine_floor=0.3, **values), dataset)
        assert [without_timings(r.metrics) for r in zero] == [without_timings(r.metrics) for r in plain]
        assert_same_weights(weights(zero[-1].network), weights(plain[-1].network))
        assert zero[-1].state()["ema"] is None
        assert_same_weights(weights(zero[-1].network), zero[-1].state()["network"])


def test_ema_resumed_mid_run_repeats_the_run(dataset) -> None:
    config = tiny(**WITH_BUFFERS, ema_decay=0.9, epochs=2)
    straight = run(config, dataset)
    state = saved(straight[0].state())  # interrupted after epoch 1
    assert state["ema"]["updates"] > 0 and state["network"].keys() == state["ema"]["network"].keys()
    resumed = run(config, dataset, resume=state)
    assert [r.epoch for r in resumed] == [2]
    for got, expected in zip(resumed, straight[1:], strict=True):
        assert without_timings(got.metrics) == without_timings(expected.metrics)
        assert_same_weights(weights(got.network), weights(expected.network))  # the averages
        assert_same_weights(got.state()["network"], expected.state()["network"])  # the raw weights


def test_a_checkpoint_from_before_the_average_resumes(dataset) -> None:
    plain = tiny(epochs=2)
    straight = run(plain, dataset)
    old = saved(straight[0].state())
    del old["ema"]  # as written before the key existed
    (resumed,) = run(plain, dataset, resume=saved(old))
    assert without_timings(resumed.metrics) == without_timings(straight[-1].metrics)
    assert_same_weights(weights(resumed.network), weights(straight[-1].network))
    # Turned on at the resume, the average starts afresh from the restored weights.
    (averaged,) = run(plain.with_updates(ema_decay=0.9), dataset, resume=saved(old))
    full, rest = divmod(TRAIN_RECORDS, plain.batch_size)
    assert averaged.state()["ema"]["updates"] == full + (rest >= 2)  # a last batch of one is skipped


def test_cnn_svm_fits_its_head_on_the_averaged_network(dataset) -> None:
    config = tiny(model="cnn_svm", ema_decay=0.9, epochs=2)
    result = run(config, dataset)[-1]
    assert isinstance(result.head, SVMStage)
    val = dataset.index("val")[:VAL_RECORDS]
    features, owners = window_outputs(result.network, dataset.tensors, val, "zscore", 0.5, CPU, features=True)
    by_head = aggregate(result.head.predict_proba(features), owners, len(val))
    np.testing.assert_allclose(result.val_probabilities, by_head, rtol=1e-6)
    # The head is the one fitted on the averaged network's features of that epoch.
    refitted, _, _ = loop._fit_head(config, result.network, dataset.tensors, dataset.index("train")[:TRAIN_RECORDS],
                                    result.epoch - 1, CPU)
    np.testing.assert_allclose(refitted.predict_proba(features), result.head.predict_proba(features), rtol=1e-6)


def test_minirocket_with_the_average(dataset) -> None:
    rocket = {"model": "minirocket", "rocket_features": 84 * 4, "rocket_max_dilations": 4, "window_overlap": 0.0,
              "ema_decay": 0.9}
    few = {"train": dataset.index("train")[:12], "val": dataset.index("val")[:4]}
    # The ridge head is the run's one closed-form fit: no step, nothing to average.
    (ridge,) = run(tiny(**rocket, rocket_head="ridge"), dataset, **few)
    assert ridge.state()["ema"] is None and np.isfinite(ridge.metrics["val_loss"])
    assert_same_weights(weights(ridge.network), ridge.state()["network"])
    # The gradient head is averaged; the integer buffers (dilations, counts) are copied intact.
    (gradient,) = run(tiny(**rocket, rocket_head="gradient", epochs=1), dataset, **few)
    model = gradient.network.model
    assert isinstance(model, MiniRocket) and np.isfinite(gradient.metrics["val_loss"])
    assert gradient.state()["ema"]["updates"] == 1
    raw = gradient.state()["network"]
    integers = {key: value for key, value in model.state_dict().items() if not value.is_floating_point()}
    assert integers and all(torch.equal(value, raw["model." + key]) for key, value in integers.items())


# -- the refit's replay ------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["simple_cnn", "cnn_svm"])
def test_the_refit_replays_a_trial_with_both(dataset, model: str) -> None:
    """As refit.py does: the trial's config with epochs = its best epoch, the rates it reported
    replayed, no validation. On the trial's own records it delivers the trial's (averaged)
    weights at that epoch bit for bit, and cnn_svm the same SVM stage."""
    config = tiny(model=model, lr_scheduler="cosine", cosine_floor=0.05, ema_decay=0.9, epochs=3, lr=3e-3)
    best = 2
    trial = run(config, dataset, until=best)[-1]  # the trial at its best epoch
    history = trial.state()["lr_history"]
    assert history == pytest.approx(cosine(3e-3, 0.05, 3)[:best], rel=1e-12)
    refit = run(config.with_updates(epochs=best), dataset, val=None, lr_schedule=history,
                head_last_epoch_only=True)
    assert [r.metrics["lr"] for r in refit] == history
    assert_same_weights(weights(refit[-1].network), weights(trial.network))
    assert (refit[-1].head is None) == (model == "simple_cnn")
    delivered, _ = record_probabilities(refit[-1].network, refit[-1].head, dataset.tensors,
                                        dataset.index("val")[:VAL_RECORDS], "zscore", 0.5, CPU)
    np.testing.assert_array_equal(delivered, trial.val_probabilities)
