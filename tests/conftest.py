"""Shared fixtures and helpers: a private data cache per test session, the shared data folder when
present, a small local Ray cluster per module, running the project's scripts, polling."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CINC = SHARED_DATA / "cinc2017" / "training2017"


def wait_for(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy (returned); fail the test naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def run_script(script: str, *args: str, timeout: float = 600,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python scripts/<script> args...` from the project's root, as a user runs it; output captured.
    `env`: variables added to this process's environment."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def search_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python scripts/search.py args...` (see `run_script`)."""
    return run_script("search.py", *args, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ray_cluster():
    """A small real local cluster for one test module (Ray 2.60 has no local mode): 4 logical CPUs
    and 1 logical GPU without CUDA, which fractional-GPU scheduling needs and no test touches.
    address "local": a cluster of our own even when another one on the machine was started last
    (ray.init() with no address attaches to the one in /tmp/ray/ray_current_cluster)."""
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


needs_shared_data = pytest.mark.skipif(
    not CINC.is_dir(), reason=f"needs the shared data folder {SHARED_DATA} (not present here)"
)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep tests from reading or filling the user's real data cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ECG_TUNE_CACHE", str(tmp_path_factory.mktemp("ecg_tune_cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _clusters_on_loopback() -> None:
    """Every Ray cluster a test starts (ray.init, cluster_utils, the CLI's) listens on 127.0.0.1 only."""
    from ecg_tune.search.cluster import keep_on_loopback

    keep_on_loopback()


@pytest.fixture(scope="session")
def refitted_smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A finished, refitted 3-trial smoke search with --mlflow through the command line (about
    30-50 s here), shared by the report, browser and tracking tests: (the --out folder, what it
    printed on stdout and stderr)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("smoke-run") / "run"
    done = subprocess.run([sys.executable, str(root / "scripts" / "search.py"), "--space", "smoke", "--data",
                           "synthetic:60", "--num-samples", "3", "--max-epochs", "2", "--cv", "1", "--out", str(out),
                           "--mlflow", "--no-onnx"],
                          capture_output=True, text=True, cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout + done.stderr
