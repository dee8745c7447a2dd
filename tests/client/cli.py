"""Run `ckpt` as a real subprocess, as a user or a script would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from tests.worker_process import ROOT


def ckpt(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "CKPT_URL": url, "COLUMNS": "200", **env}
    environment.pop("CKPT_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def ckpt_json(url: str, *args: str) -> Any:
    result = ckpt(url, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
