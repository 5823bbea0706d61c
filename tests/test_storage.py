"""Experiment storage and the run folder under faults: --storage paths and URIs (S3 through a local
moto server on 127.0.0.1), the record refit reads Tune's results through, one writer per --out,
the disk running out, an interrupted search."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, search_cli

from ecg_tune.errors import ConfigError, EcgTuneError
from ecg_tune.runs import RunFolder
from ecg_tune.search.checkpoints import delete_older_checkpoints
from ecg_tune.storage import ExperimentStorage

SEARCH = [sys.executable, str(ROOT / "scripts" / "search.py")]
# A small, quick search: 2 trials of 2 epochs on short synthetic records, no cross-validation.
SMALL = ["--space", "smoke", "--data", "synthetic:80", "--num-samples", "2", "--max-epochs", "2",
         "--scheduler", "fifo", "--cv", "1"]



def epochs_reported(folder: RunFolder) -> dict[str, list[int]]:
    return {tid: history["training_iteration"].tolist() for tid, history in folder.histories().items()}


# --- ExperimentStorage -----------------------------------------------------------------------

def test_default_storage_is_the_out_folder(tmp_path: Path) -> None:
    storage = ExperimentStorage.for_search(None, tmp_path / "run")
    assert storage.is_local and storage.experiment_path == str(tmp_path / "run" / "experiment")


def test_a_storage_path_holds_the_run_under_its_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = ExperimentStorage.for_search("shared", tmp_path / "runs" / "cinc-1")
    assert storage.experiment_path == str(tmp_path / "shared" / "cinc-1" / "experiment")


def test_a_uri_keeps_its_options_out_of_what_is_shown(tmp_path: Path) -> None:
    uri = "s3://bucket/runs?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    storage = ExperimentStorage.for_search(uri, tmp_path / "run")
    assert storage.storage_path == "bucket/runs/run" and not storage.is_local
    assert storage.describe() == "s3://bucket/runs/run/experiment"
    assert "endpoint" not in storage.describe()


def test_a_uri_nothing_opens_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--storage nosuch://\.\.\.: cannot open it"):
        ExperimentStorage.for_search("nosuch://bucket/x", tmp_path / "run")


@pytest.mark.parametrize("content", ["", "{", "[]", '{"run_name": "x"}'])
def test_a_damaged_storage_record_names_the_file(tmp_path: Path, content: str) -> None:
    folder = RunFolder(tmp_path)
    folder.storage_record_path.write_text(content)
    with pytest.raises(EcgTuneError, match="storage.json: not a storage record"):
        folder.storage()


def test_histories_stand_when_a_kill_cut_the_last_line(tmp_path: Path) -> None:
    trial = tmp_path / "experiment" / "train_trial_abc"
    trial.mkdir(parents=True)
    rows = [{"trial_id": "abc", "training_iteration": i, "val_loss": 1.0 / i} for i in (1, 2)]
    (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"trial_id": "abc", "trai')
    assert epochs_reported(RunFolder(tmp_path)) == {"abc": [1, 2]}


def test_trials_csv_reads_back_every_float_it_wrote(tmp_path: Path) -> None:
    from ecg_tune.run_records import TrialRecord

    # pandas' default parser reads these written values back an ulp off.
    lrs = [0.0025578753079677284, 0.00012345678901234567, 0.1 + 0.2]
    run = RunFolder(tmp_path)
    run.write_trials([TrialRecord(f"t{i}", "completed", 2, {"model": "simple_cnn", "lr": lr}, best_epoch=2)
                      for i, lr in enumerate(lrs)])
    assert run.trial_table().config["lr"].tolist() == lrs


# --- one writer per run folder ---------------------------------------------------------------

def test_a_second_search_on_the_same_out_is_refused_and_the_first_unharmed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from ecg_tune.runs import RunFolder\n"
        f"with RunFolder({str(out)!r}).lock():\n"
        "    print('held', flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        (out / "split.csv").write_text("the first search's file\n")
        second = search_cli(*SMALL, "--out", str(out), "--no-refit")
        assert second.returncode == 2
        assert f"error: {out}: in use by pid {holder.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert (out / "split.csv").read_text() == "the first search's file\n"
        assert not (out / "experiment").exists()
    finally:
        holder.kill()
        holder.wait()
    # The OS released the lock with the killed holder: the folder is usable again.
    with RunFolder(out).lock():
        pass


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    with folder.lock(), folder.lock():  # a search's own refit takes it again
        pass


# --- a full disk -----------------------------------------------------------------------------

def test_a_full_disk_is_a_one_line_error(tmp_path: Path) -> None:
    from ecg_tune.search.tuner import _raise_if_full

    storage = ExperimentStorage.for_search(None, tmp_path / "run")
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("Tune wrapped it") from exc
    except RuntimeError as wrapped:
        with pytest.raises(ConfigError, match="no space left on the device; free space, then continue with --resume"):
            _raise_if_full(storage, wrapped)
    _raise_if_full(storage, RuntimeError("something else"))  # not a full disk: left to the caller


@pytest.mark.slow  # two searches, about 1.5 minutes here
def test_low_disk_space_stops_the_search_resumably(tmp_path: Path) -> None:
    """The guard trips at the first epoch (more free space asked for than any disk has), the search
    stops with its state saved (exit 130, nothing exported), and --resume finishes it without
    training a reported epoch again."""
    out = tmp_path / "run"
    stopped = search_cli(*SMALL, "--out", str(out), "--no-refit", "--min-free-mb", str(2**40))
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "stopping the search:" in stopped.stdout
    assert "continue it with --resume --out" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not (out / "best_config.json").exists()
    before = epochs_reported(RunFolder(out))
    assert before and all(epochs for epochs in before.values())
    resumed = search_cli(*SMALL, "--out", str(out), "--no-refit", "--resume", "--min-free-mb", "0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = epochs_reported(RunFolder(out))
    assert all(epochs == [1, 2] for epochs in after.values()), after  # each epoch once, none retrained
    assert (pd.read_csv(out / "trials.csv")["epochs"] == 2).all()


# --- S3 --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3() -> tuple[str, dict[str, str]]:
    """A local S3 (moto's server on 127.0.0.1) with a bucket; the URI options and credentials."""
    moto_server = pytest.importorskip("moto.server", reason="moto is not installed (pip install moto[server])")
    import boto3

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="ecg")
    yield f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", credentials
    server.stop()


@pytest.mark.slow  # a search, its refit and a resume against the S3 server, about 1.5 minutes here
def test_search_refit_and_resume_with_s3_storage(s3, tmp_path: Path) -> None:
    options, credentials = s3
    out = tmp_path / "run"
    uri = f"s3://ecg/searches?{options}"
    done = search_cli(*SMALL, "--out", str(out), "--storage", uri, env=credentials)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Tune's experiment: s3://ecg/searches/run/experiment" in done.stdout
    assert not (out / "experiment").exists()
    # The refit read the best trial's history from S3 (its learning rates, the training curves).
    assert (out / "report.json").is_file() and (out / "training_curves.png").is_file()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in credentials.items():
            patch.setenv(key, value)
        histories = epochs_reported(RunFolder(out))
        assert len(histories) == 2 and all(epochs == [1, 2] for epochs in histories.values())
    # A finished search resumed from its storage (recorded in the run folder) trains nothing again.
    resumed = search_cli(*SMALL, "--out", str(out), "--resume", "--no-refit", env=credentials)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not re.search(r"trial \w+ epoch \d+/", resumed.stdout), "a finished trial trained again"


def test_a_trial_that_went_back_has_one_row_per_epoch_the_last(tmp_path: Path) -> None:
    """A trial restarted from an older checkpoint reports epochs again (trainable.py); its history
    keeps each epoch's last report, which the refit replays the learning rate from."""
    for trial, epochs in (("abc", [1, 2, 1, 2, 3]), ("xyz", [1])):
        folder = tmp_path / "experiment" / f"train_trial_{trial}_00001"
        folder.mkdir(parents=True)
        rows = [{"trial_id": trial, "training_iteration": e, "lr": 0.1 * (n + 1)} for n, e in enumerate(epochs)]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunFolder(tmp_path)
    history = run.history("abc")
    assert history is not None
    assert history["training_iteration"].tolist() == [1, 2, 3]
    assert history["lr"].tolist() == pytest.approx([0.3, 0.4, 0.5])
    assert list(run.histories("xyz")) == ["xyz"] and set(run.histories()) == {"abc", "xyz"}


def test_an_ended_trial_keeps_its_newest_registered_checkpoint_and_any_newer(tmp_path: Path) -> None:
    """search/checkpoints.py: the older folders go; the registered one (the predictions of the
    ranked epoch) and a newer one Tune never registered stay, and so does everything else."""
    import pyarrow.fs as pafs
    from ray import tune

    trial = tmp_path / "train_trial_0696298c_3_model=simple_cnn"
    for index in range(4):
        (trial / f"checkpoint_{index:06d}").mkdir(parents=True)
        (trial / f"checkpoint_{index:06d}" / "state.pt").write_bytes(b"state")
    (trial / "result.json").write_text("{}\n")
    registered = tune.Checkpoint(str(trial / "checkpoint_000002"), filesystem=pafs.LocalFileSystem())
    assert delete_older_checkpoints(registered) == 2
    assert sorted(p.name for p in trial.iterdir()) == ["checkpoint_000002", "checkpoint_000003", "result.json"]
    assert delete_older_checkpoints(registered) == 0 and delete_older_checkpoints(None) == 0

