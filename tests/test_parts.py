"""Parts own their options: a transform registered from outside the package (here, in a test)
is configurable, searchable, trainable and exported without a change anywhere else; and the
package ships what it needs outside the checkout."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import tomllib
import torch
from pydantic import Field

from ecg_tune.bundle import load_bundle, save_bundle
from ecg_tune.cli import main
from ecg_tune.config import make_config
from ecg_tune.data import prepare
from ecg_tune.errors import ConfigError
from ecg_tune.registry import PartOptions, Registry
from ecg_tune.signal.transforms import TRANSFORMS, BatchTransform
from ecg_tune.training.evaluate import record_probabilities
from ecg_tune.training.loop import fit

ROOT = Path(__file__).resolve().parents[1]


class DifferenceOptions(PartOptions):
    difference_order: int = Field(1, ge=1, le=3)  # how many times the signal is differenced


class DifferenceTransform(BatchTransform):
    """The n-th difference of the signal, (B, L) -> (B, 1, L - n): a slope detector."""

    Options: ClassVar[type[PartOptions]] = DifferenceOptions

    def __init__(self, input_length: int, *, difference_order: int = 1) -> None:
        super().__init__(input_length)
        self.order = difference_order
        self.output_shape = (1, self.input_length - difference_order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return torch.diff(x, n=self.order, dim=-1).unsqueeze(1)


@pytest.fixture
def difference():
    TRANSFORMS.register("difference")(DifferenceTransform)
    yield DifferenceTransform
    TRANSFORMS.unregister("difference")


SPACE = """
model: simple_cnn
input_length: 600
transform: {type: choice, values: [none, difference]}
difference_order: {type: int, low: 1, high: 3, when: {transform: difference}}
search: {num_samples: 2, max_epochs: 1}
"""


def test_a_new_transform_is_one_registry_entry(difference, tmp_path: Path, capsys) -> None:
    # Its option is a config key, validated by its own model.
    assert make_config({"transform": "difference", "difference_order": 2}).part_options("transform") == \
        {"difference_order": 2}
    with pytest.raises(ConfigError, match="difference_order: must be at most 3, got 4"):
        make_config({"difference_order": 4})
    # A search's dry run takes it in a space file.
    space = tmp_path / "difference.yaml"
    space.write_text(SPACE)
    assert main(["search", "--dry-run", "--space", str(space), "--data", "synthetic:60"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"difference_order\s+int\s+1\.\.3\s+when transform = difference", out), out
    # `train` trains it.
    assert main(["train", "--data", "synthetic:60", "--epochs", "1", "--set", "transform=difference",
                 "--set", "difference_order=2", "--set", "input_length=600"]) == 0
    out = capsys.readouterr().out
    assert "transform difference (difference_order 2)" in out and "epoch   1" in out
    # The bundle saves its options by its declaration and restores the same network.
    dataset = prepare("synthetic:60", progress=False)
    config = make_config({"transform": "difference", "difference_order": 2, "input_length": 600, "epochs": 1})
    (result,) = fit(config, dataset.tensors, dataset.index("train"), None, device="cpu")
    save_bundle(tmp_path / "model", result.network, None, config, dataset.records.classes, 300.0, onnx=False)
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["preprocessing"]["transform"] == "difference" and meta["preprocessing"]["difference_order"] == 2
    bundle = load_bundle(tmp_path / "model", device="cpu")
    assert isinstance(bundle.network.transform, DifferenceTransform) and bundle.network.transform.order == 2
    test = dataset.index("test")
    expected, _ = record_probabilities(result.network, None, dataset.tensors, test, "zscore", 0.5,
                                       torch.device("cpu"))
    np.testing.assert_allclose(bundle.predict(dataset.records.subset(test)), expected, rtol=1e-5, atol=1e-6)


def test_an_unregistered_part_option_is_an_unknown_key() -> None:
    with pytest.raises(ConfigError, match="difference_order: unknown key"):
        make_config({"difference_order": 2})


def test_two_parts_may_share_an_option_only_with_one_definition() -> None:
    class Narrow(PartOptions):
        width: int = Field(8, ge=1)

    class Wide(PartOptions):
        width: int = Field(32, ge=1)

    registry: Registry[type] = Registry("thing")
    registry.register("narrow")(type("A", (), {"Options": Narrow}))
    with pytest.raises(ValueError, match="declares option 'width' differently"):
        registry.register("wide")(type("B", (), {"Options": Wide}))


def test_every_package_is_installed() -> None:
    """pyproject.toml lists the packages (the spaces folder is mapped); none may be missing."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ecg_tune").rglob("__init__.py")}
    assert found <= listed and "ecg_tune.search_spaces" in listed
