"""The `ecg-tune` command line: the train command and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED_DATA, needs_shared_data

from ecg_tune.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_train_prints_a_line_per_epoch_and_keeps_its_outputs(tmp_path: Path, capsys) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model: simple_cnn\ntransform: wavelet\nlevels: 4\ninput_length: 1500\n")
    code = main(["train", "--data", "synthetic:60", "--config", str(config), "--epochs", "2",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "val_cinc_f1" in lines[0]
    assert (tmp_path / "out" / "split.csv").is_file()
    assert len(json.loads((tmp_path / "out" / "history.json").read_text())) == 2


@pytest.mark.parametrize("args,message", [
    (["--data", "/no/such/folder"], "no such file"),
    (["--set", "model=vgg"], "unknown model"),
    (["--set", "levels=12", "--set", "transform=wavelet", "--set", "input_length=96"], "levels"),
    (["--config", "/no/config.yaml"], "config file not found"),
])
def test_bad_input_is_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--data", "synthetic:60",
                             "--epochs", "1", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


@needs_shared_data
def test_train_on_the_notebook_pickles(capsys) -> None:
    assert main(["train", "--data", str(SHARED_DATA / "seed_pickles"), "--epochs", "1",
                 "--set", "transform=wavelet", "--set", "input_length=3000"]) == 0
    assert "epoch   1" in capsys.readouterr().out
