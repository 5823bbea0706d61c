"""Searches on a cluster of several Ray nodes on this machine (every address on 127.0.0.1), through
the command line as a user runs them: --address, --connect-timeout, --storage (shared path, S3),
trials on another node, the refit, a node removed mid-trial."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, search_cli

from ecg_tune.errors import ConfigError

SEARCH = [sys.executable, str(ROOT / "scripts" / "search.py")]



def trial_rows(experiment: Path) -> dict[str, list[dict]]:
    """Every trial's reported rows (result.json), by trial folder."""
    return {path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in experiment.glob("*/result.json")}


class WorkerWatch:
    """Records, while a search runs, which node's raylet each worker process descends from (the
    workers exit when the search's job ends, so this is the only moment to look)."""

    def __init__(self, raylets: dict[str, int]) -> None:
        import threading

        self.raylets, self.nodes = raylets, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        while not self._stop.is_set():
            for name, pid in self.raylets.items():
                try:
                    for child in psutil.Process(pid).children(recursive=True):
                        self.nodes[child.pid] = name
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.2)

    def __enter__(self) -> WorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[tuple[object, dict[str, int]]]:
    """A head node and node b (a `node_b` resource), 1 CPU each, on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    node_b = cluster.add_node(num_cpus=1, resources={"node_b": 1})
    cluster.wait_for_nodes()
    raylets = {"head": cluster.head_node.all_processes["raylet"][0].process.pid,
               "node_b": node_b.all_processes["raylet"][0].process.pid}
    yield cluster, raylets
    cluster.shutdown()


def test_cluster_listens_on_loopback_only(two_nodes) -> None:
    cluster, _ = two_nodes
    host, port = cluster.address.rsplit(":", 1)
    assert host == "127.0.0.1"
    with socket.create_connection((host, int(port)), timeout=5):
        pass


def test_unreachable_address_is_a_short_error(tmp_path: Path) -> None:
    started = time.monotonic()
    done = search_cli("--space", "smoke", "--data", "synthetic:60", "--address", "127.0.0.1:1", "--connect-timeout", "3",
               "--out", str(tmp_path / "out"), "--no-refit", timeout=120)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 60
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: --address 127.0.0.1:1: no Ray cluster answered")


def test_search_and_refit_on_two_nodes(two_nodes, tmp_path: Path) -> None:
    cluster, raylets = two_nodes
    store, out = tmp_path / "store", tmp_path / "out"
    with WorkerWatch(raylets) as watch:
        done = search_cli("--space", "smoke", "--data", "synthetic:160", "--address", cluster.address,
                   "--storage", str(store), "--out", str(out), "--num-samples", "3", "--max-epochs", "2",
                   "--scheduler", "fifo", "--trial-resource", "node_b=0.01", "--no-onnx")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    experiment = store / out.name / "experiment"
    rows = trial_rows(experiment)
    assert len(rows) == 3
    pids = {row["pid"] for trial in rows.values() for row in trial}
    # The trials asked for a sliver of node b's resource: each ran in a worker of node b.
    assert {watch.nodes.get(pid) for pid in pids} == {"node_b"}
    # Tune's results are read from the storage, not from --out, which holds only the driver's files.
    assert not (out / "experiment").exists()
    assert json.loads((out / "storage.json").read_text())["root"] == str(store)
    report = json.loads((out / "report.json").read_text())
    assert report["epochs"] >= 1
    for name in ("best_config.json", "trials.csv", "split.csv", "training_curves.png", "model/config.json"):
        assert (out / name).is_file(), name


def test_multi_node_needs_shared_storage(two_nodes, tmp_path: Path) -> None:
    cluster, _ = two_nodes
    done = search_cli("--space", "smoke", "--data", "synthetic:60", "--address", cluster.address,
               "--out", str(tmp_path / "out"), "--num-samples", "1", "--no-refit")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "Tune needs storage they all see: give --storage" in done.stderr


@pytest.mark.slow  # about 1 minute here (55 s), with its own 3-node cluster
def test_a_removed_node_s_trial_continues_on_another_node(tmp_path: Path) -> None:
    """Trials run on nodes b and c (a `worker` resource); node b is removed once its trial has
    reported 2 epochs: that trial continues on node c from its checkpoint, and no epoch it had
    reported is trained again."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        node_b = cluster.add_node(num_cpus=1, resources={"worker": 1})
        node_c = cluster.add_node(num_cpus=1, resources={"worker": 1})
        cluster.wait_for_nodes()
        raylets = {"b": node_b.all_processes["raylet"][0].process.pid,
                   "c": node_c.all_processes["raylet"][0].process.pid}
        store, out = tmp_path / "store", tmp_path / "out"
        experiment = store / out.name / "experiment"
        args = ["--space", "smoke", "--data", "synthetic:160", "--address", cluster.address, "--storage", str(store),
                "--out", str(out), "--num-samples", "2", "--max-epochs", "6", "--scheduler", "fifo", "--cv", "1",
                "--trial-resource", "worker=0.01", "--no-refit"]
        with WorkerWatch(raylets) as watch:
            search = subprocess.Popen([*SEARCH, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True, cwd=ROOT)
            moved, deadline = None, time.monotonic() + 400
            while moved is None and time.monotonic() < deadline and search.poll() is None:
                time.sleep(0.5)
                for name, rows in trial_rows(experiment).items():
                    if len(rows) >= 2 and watch.nodes.get(rows[-1]["pid"]) == "b":
                        moved = name
            assert moved is not None, "no trial reached epoch 2 on node b"
            reported = len(trial_rows(experiment)[moved])
            cluster.remove_node(node_b)
            removed_at = time.monotonic()
            output, _ = search.communicate(timeout=600)
        assert search.returncode == 0, output[-3000:]
        rows = trial_rows(experiment)
        epochs = [row["training_iteration"] for row in rows[moved]]
        assert epochs == list(range(1, 7)), epochs  # continued from its checkpoint: no epoch twice
        assert {watch.nodes.get(row["pid"]) for row in rows[moved][reported:]} == {"c"}
        assert all(len(trial) == 6 for trial in rows.values())
        print(f"\nnode b removed after epoch {reported} of trial {moved[:20]}; it finished on node c "
              f"{time.monotonic() - removed_at:.0f} s later with epochs {epochs}")
    finally:
        cluster.shutdown()


def test_a_path_some_node_cannot_see_is_refused(two_nodes, tmp_path: Path, monkeypatch) -> None:
    """The shared-storage check on the two-node cluster, with node b's answer replaced by "not
    seen" (nodes on one machine share its disk; a node in its own mount namespace could not join
    a loopback-only cluster here): the search is refused, naming the blind node, marker removed."""
    import ray

    from ecg_tune.search import cluster as cluster_module
    from ecg_tune.storage import ExperimentStorage

    test_cluster, _ = two_nodes
    seen_markers: list[str] = []
    real = cluster_module._nodes_see

    def node_b_is_blind(nodes: list[dict], marker: str) -> list[bool]:
        seen_markers.append(marker)
        answers = real(nodes, marker)  # the real tasks, one pinned to each node
        assert answers == [True, True]  # one machine: every node sees the driver's file
        return [answers[0], False]

    monkeypatch.setattr(cluster_module, "_nodes_see", node_b_is_blind)
    ray.init(address=test_cluster.address, log_to_driver=False)
    try:
        storage = ExperimentStorage.for_search(str(tmp_path / "store"), tmp_path / "run")
        with pytest.raises(ConfigError, match=r"not seen by 1 of 2 nodes \(127\.0\.0\.1\); give --storage a path"):
            cluster_module.check_storage_shared(storage, given=True)
        cluster_module.check_storage_shared(ExperimentStorage.for_search(
            "s3://bucket/x?region=us-east-1&endpoint_override=127.0.0.1:9&scheme=http", tmp_path / "run"),
                                            given=True)  # a URI is shared by definition
    finally:
        ray.shutdown()
    assert seen_markers and not Path(seen_markers[0]).exists()
