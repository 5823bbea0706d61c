"""Shared fixtures: a private data cache per test session, and the shared data folder when present."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

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
    printed)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("smoke-run") / "run"
    done = subprocess.run([sys.executable, str(root / "scripts" / "search.py"), "--space", "smoke", "--data",
                           "synthetic:60", "--num-samples", "3", "--max-epochs", "2", "--cv", "1", "--out", str(out),
                           "--mlflow"],
                          capture_output=True, text=True, cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout
