"""How the torch loader child starts without preexec_fn: it waits for the parent to set its
rlimits and say go, and it dies with the process that started it."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.ingest import torch_pickle
from app.ingest.types import IngestLimits
from tests.ingest.sandbox import loader_children, slow_torch_bytes
from tests.worker_process import ROOT

# Enough views of one storage to keep the child loading well past the test's 1 s window.
SLOW_TENSORS = 60_000


@pytest.fixture(scope="module")
def slow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slow") / "slow.pt"
    path.write_bytes(slow_torch_bytes(SLOW_TENSORS))
    return path


def reading(pid: int, path: Path) -> bool:
    """`pid` has `path` open: it got the go byte and is loading."""
    try:
        return any(fd.readlink() == path for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_loader_child_dies_with_its_parent(slow_checkpoint: Path, tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; "
        "from app.ingest.torch_pickle import convert_torch_checkpoint; "
        "from app.ingest.types import IngestLimits; "
        "convert_torch_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), IngestLimits())"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(slow_checkpoint), str(tmp_path / "out")], cwd=ROOT
    )
    children: list[int] = []
    try:
        assert wait_until(lambda: loader_children(parent.pid), 60), "no loader child started"
        children = loader_children(parent.pid)
        (child,) = children
        assert wait_until(lambda: reading(child, slow_checkpoint), 60), "the loader never read"
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not alive(child), 1), "the loader outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        for pid in children:  # a loader that outlived the test's assertion goes too
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_child_started_without_the_go_byte_refuses(slow_checkpoint: Path, tmp_path: Path) -> None:
    """Run by hand (stdin closed), the child never opens the upload."""
    options = torch_pickle.child_options_for(slow_checkpoint.stat().st_size, IngestLimits())
    command = [sys.executable, "-m", torch_pickle.CHILD_MODULE, str(slow_checkpoint)]
    done = subprocess.run(
        [*command, str(tmp_path), options.to_json()],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 1
    assert b"no go byte" in done.stderr
    assert not list(tmp_path.iterdir())


def test_parent_sets_the_childs_rlimits() -> None:
    """limit_resources lowers another process's limits (prlimit), never raising a hard one."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        torch_pickle.limit_resources(sleeper.pid, 1 << 30, 7, 1 << 20)
        assert resource.prlimit(sleeper.pid, resource.RLIMIT_AS) == (1 << 30, 1 << 30)
        assert resource.prlimit(sleeper.pid, resource.RLIMIT_CPU) == (7, 12)
        assert resource.prlimit(sleeper.pid, resource.RLIMIT_FSIZE) == (1 << 20, 1 << 20)
        assert resource.prlimit(sleeper.pid, resource.RLIMIT_CORE) == (0, 0)
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
