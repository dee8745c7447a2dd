"""`ckpt demo` as a user runs it: a real subprocess. Against a running server it is tested in
tests/test_make_serve.py, on the server `make serve` starts with its defaults."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.live_server import free_port
from tests.worker_process import ROOT


def run_demo(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--url", url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_without_a_server_it_says_how_to_start_one(tmp_path: Path) -> None:
    done = run_demo(f"http://127.0.0.1:{free_port()}", "--workdir", str(tmp_path))
    assert done.returncode == 1
    assert "unreachable" in done.stdout
    assert "make serve" in done.stdout
    assert not (tmp_path / "epoch-1.pt").exists()
