"""Shared benchmark plumbing: a real server subprocess, timers, GPT-2 124M-shaped weights."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_server(data_dir: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`ckpt migrate` then `ckpt serve` in a child process; yields (base URL, process)."""
    port = free_port()
    environ = {**os.environ, "CKPT_DATA_DIR": str(data_dir), "CKPT_PORT": str(port), **env}
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "migrate"], env=environ, check=True, capture_output=True, cwd=ROOT)
    log = (data_dir.parent / "server.log").open("ab")  # the server's own log, for post-mortems
    process = subprocess.Popen([*cli, "serve"], env=environ, cwd=ROOT, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@contextmanager
def running_workers(
    data_dir: Path, count: int, **env: str
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` real `ckpt worker` processes, yielded once each logs that it polls the queue
    (their logs go to `worker<i>.log` beside `data_dir`)."""
    environ = {**os.environ, "CKPT_DATA_DIR": str(data_dir), **env}
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    logs = [data_dir.parent / f"worker{index}.log" for index in range(count)]
    processes = []
    try:
        for log in logs:
            with log.open("wb") as sink:
                command = [sys.executable, "-m", "app.cli", "worker"]
                processes.append(subprocess.Popen(command, env=environ, cwd=ROOT, stderr=sink))
        _wait_polling(processes, logs)
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def _wait_polling(processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Until every worker has logged `worker <id> on <device>` (its loop has started)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("a worker exited during start-up")
        if all(_WORKER_READY.search(log.read_text(errors="replace")) for log in logs):
            return
        time.sleep(0.1)
    raise RuntimeError("the workers did not start polling")


_WORKER_READY = re.compile(r"worker \S+ on ")


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become healthy")


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Best wall time of `repeat` runs, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def gpt2_124m_folder(dest: Path, seed: int = 0) -> Path:
    """save_pretrained() of a randomly initialised GPT-2 124M (about 500 MB of float32)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    if (dest / "model.safetensors").is_file():
        return dest
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(dest)
    return dest


# SmolLM-135M's shape (Llama): random weights, tied embeddings; about 540 MB of float32.
LLAMA_135M: dict[str, Any] = {
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}


def llama_135m_folder(dest: Path, seed: int = 0) -> Path:
    """save_pretrained() of a randomly initialised Llama-135M-shaped model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (dest / "model.safetensors").is_file():
        return dest
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**LLAMA_135M)).save_pretrained(dest)
    return dest


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
