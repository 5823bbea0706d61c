"""The Ray cluster a search runs on: starting a local one, attaching to `--address` within a bounded
wait, and checking that the experiment storage is one every node sees.

Ray's own attach retries for minutes (printing C++ warnings and ignoring SIGTERM) when nothing
answers at the address, so `connect` first waits for the address to accept a TCP connection and
then gives `ray.init` the rest of `--connect-timeout`; either failing is a one-line ConfigError.
A local cluster listens on 127.0.0.1 only: Ray on Linux otherwise advertises the machine's network
address (ray-notes), which opens the cluster to the network for a laptop's search.

Since Ray 2.7 every node writes its trials' checkpoints to the storage itself, so on a cluster of
more than one node the storage must be shared: a URI (s3://, gs://, ...) is taken as shared, and a
path only when a task on every node finds a marker file the driver wrote there.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecg_tune.errors import ConfigError
from ecg_tune.search.upstream import RAY_LOOPBACK_SWITCH, keep_ray_on_loopback
from ecg_tune.storage import ExperimentStorage

DEFAULT_CONNECT_TIMEOUT = 30.0


def connect(address: str | None, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, dashboard: bool = False,
            **local: Any) -> None:
    """Attach to the cluster at `address`, or start a local one (`local`: ray.init's resource
    arguments, e.g. num_cpus for tests); nothing to do when Ray is already initialised."""
    import ray

    if ray.is_initialized():
        return
    # Trial stdout (checkpoint notices) would drown the progress lines; errors are reported by
    # SearchProgress and kept in each trial's error.txt.
    kwargs: dict[str, Any] = {"log_to_driver": False, **local}
    if address is None:
        keep_on_loopback()
        kwargs["include_dashboard"] = dashboard
        if dashboard:
            kwargs["dashboard_host"] = "127.0.0.1"
        # "local": always a new cluster of this process, never one a `ray start` left running here
        # (ray.init() alone may join that one, e.g. through RAY_ADDRESS).
        context = ray.init(address="local", **kwargs)
        if dashboard and getattr(context, "dashboard_url", None):
            print(f"Ray dashboard: http://{context.dashboard_url} (token: ~/.ray/auth_token)", flush=True)
        return
    if _is_loopback(address):
        keep_on_loopback()  # a cluster on this machine, reached at the address given
    deadline = time.monotonic() + connect_timeout
    _wait_for_listener(address, deadline, connect_timeout)
    _init_before(deadline, address, connect_timeout, kwargs)


def keep_on_loopback() -> None:
    """Keep this driver (and a local cluster it starts) on 127.0.0.1, unless the user set Ray's switch."""
    if RAY_LOOPBACK_SWITCH in os.environ:
        return
    # Ray's single-machine mode, for this process and the Ray processes it starts (set through
    # Ray's private constants: search/upstream.py).
    keep_ray_on_loopback()


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's live nodes with resources (Ray's `ray.nodes()` entries)."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive") and node.get("Resources")]


def check_storage_shared(storage: ExperimentStorage, given: bool) -> None:
    """Refuse, up front, storage that some node of a multi-node cluster cannot write to (`given`:
    whether the user passed --storage)."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    advice = "give --storage a path on a filesystem every node mounts (NFS) or a URI such as s3://bucket/runs"
    if not given:
        raise ConfigError(f"the cluster has {len(nodes)} nodes and Tune needs storage they all see: {advice}")
    if not storage.is_local:
        return
    root = Path(storage.storage_path)
    marker = root / f".ecg-tune-shared-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text("written by the search's driver; every node must see it\n")
    except OSError as exc:
        raise ConfigError(f"--storage {root}: cannot write there ({exc.strerror or exc})") from None
    try:
        blind = [node for node, sees in zip(nodes, _nodes_see(nodes, str(marker)), strict=True) if not sees]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        names = ", ".join(str(node.get("NodeManagerAddress", node["NodeID"][:8])) for node in blind)
        raise ConfigError(f"--storage {root}: not seen by {len(blind)} of {len(nodes)} nodes ({names}); {advice}")


def _nodes_see(nodes: list[dict[str, Any]], marker: str) -> list[bool]:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    pending = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                            ).remote(marker) for node in nodes]
    return [bool(answer) for answer in ray.get(pending, timeout=120)]


def _is_loopback(address: str) -> bool:
    host = _host_port(address)[0]
    return host in {"127.0.0.1", "localhost", "::1"}


def _host_port(address: str) -> tuple[str, int | None]:
    text = address.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return text, None
    return host.strip("[]"), int(port)


def _wait_for_listener(address: str, deadline: float, timeout: float) -> None:
    """Return once something accepts TCP connections at `address` ("auto" and names without a
    port are left to Ray)."""
    host, port = _host_port(address)
    if port is None:
        return
    last_error = "nothing answered"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
                return
        except OSError as exc:
            last_error = exc.strerror or str(exc)
            time.sleep(0.5)
    raise ConfigError(f"--address {address}: no Ray cluster answered within {timeout:g} s ({last_error}); "
                      f"start one with `ray start --head` or raise --connect-timeout")


@dataclass
class _Attempt:
    error: BaseException | None = None
    done: bool = False


def _init_before(deadline: float, address: str, timeout: float, kwargs: dict[str, Any]) -> None:
    """ray.init in a daemon thread, so that an attach Ray keeps retrying cannot outlive the deadline
    (the process exits with the error; the thread dies with it)."""
    import ray

    attempt = _Attempt()

    def attach() -> None:
        try:
            ray.init(address=address, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            attempt.error = exc
        attempt.done = True

    thread = threading.Thread(target=attach, name="ray-attach", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not attempt.done:
        raise ConfigError(f"--address {address}: the cluster did not accept this driver within {timeout:g} s "
                          f"(is it a Ray head's GCS port, reachable at the address its nodes advertise?); "
                          f"raise --connect-timeout if it is only slow")
    if attempt.error is not None:
        message = str(attempt.error).strip().splitlines()
        raise ConfigError(f"--address {address}: {message[0] if message else type(attempt.error).__name__}")

