"""README.md as an executable document: every bash and Python block runs as written, top to
bottom, in one working folder holding the files a reader has (a save_pretrained folder, a bare
safetensors file, a training checkpoint), against a fresh `make serve` (default settings)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.models import CORPUS, build_gpt2, build_tokenizer, save_model_folder
from tests.test_make_serve import MadeServer, start_make_serve, stop_group
from tests.worker_process import ROOT

README = ROOT / "README.md"
README_URL = "http://127.0.0.1:8000"
RUNNABLE = frozenset({"bash", "python"})
BLOCK_TIMEOUT_SECONDS = 300

# Sections whose blocks cannot run against a test server, and why. Nothing else is skipped.
SKIPPED_SECTIONS = {
    "Quick start": "`make serve` is the server these blocks run against and `make test` runs "
    "this; tests/test_make_serve.py runs `ckpt demo` against `make serve`",
    "Deployment": "needs a Docker engine",
    "PostgreSQL for metadata and the job queue": "needs a PostgreSQL server for the registry",
    "Blobs in object storage": "needs an S3 endpoint",
}
# Placeholders a reader would have to replace before pasting: the README captures ids instead.
PLACEHOLDER = re.compile(r"<(id|ref|key|name)>")

# Every curl call fails on an HTTP error status (the README's curl lines do not say -f).
CURL_SHIM = """#!/bin/sh
exec {curl} --fail-with-body --silent --show-error "$@"
"""
# There is no browser here: `open URL` fetches the page instead, and fails as curl does.
OPEN_SHIM = """#!/bin/sh
exec curl --output /dev/null "$1"
"""


@dataclass(frozen=True)
class Block:
    section: str
    language: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.section}, {self.language})"


def readme_blocks(text: str) -> list[Block]:
    """Fenced blocks with the heading they sit under (comment lines inside blocks are no
    headings)."""
    blocks: list[Block] = []
    section, fence_line, language, lines = "", 0, None, list[str]()
    for number, line in enumerate(text.splitlines(), start=1):
        if language is None:
            if line.startswith("```"):
                fence_line, language, lines = number, line[3:].strip(), []
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.strip() == "```":
            blocks.append(Block(section, language, fence_line, "\n".join(lines) + "\n"))
            language = None
        else:
            lines.append(line)
    return blocks


def runnable_blocks() -> list[Block]:
    return [
        block
        for block in readme_blocks(README.read_text())
        if block.language in RUNNABLE and block.section not in SKIPPED_SECTIONS
    ]


def test_every_skipped_section_still_has_a_command_block() -> None:
    """The allow-list names real sections; a renamed heading must not silently run nothing."""
    sections = {b.section for b in readme_blocks(README.read_text()) if b.language in RUNNABLE}
    assert set(SKIPPED_SECTIONS) <= sections


def test_the_tour_is_covered_and_copy_pasteable() -> None:
    blocks = runnable_blocks()
    sections = {block.section for block in blocks}
    assert {"A tour with curl", "Command line and Python client", "Generation"} <= sections
    for block in blocks:
        assert not PLACEHOLDER.search(without_comments(block.code)), f"{block}: a placeholder"


def without_comments(code: str) -> str:
    """The commands alone: a comment may describe a format (`ckpt_<id>_<secret>`)."""
    return "\n".join(re.split(r"(?:^|\s)#", line, maxsplit=1)[0] for line in code.splitlines())


def save_training_checkpoint(model: Any, tokenizer: Any, path: Path) -> None:
    """One AdamW step on the corpus, saved as training loops do (the model is left trained)."""
    import torch

    ids = torch.tensor([tokenizer.encode(CORPUS[0])])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    state = {
        "epoch": 3,
        "step": 300,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": 2.5,
        "val_loss": 2.75,
        "config": model.config.to_dict(),
    }
    torch.save(state, path)


def reader_files(workdir: Path) -> None:
    """What the README assumes a reader has: `my_model/` (save_pretrained of the trained model),
    the same weights as a bare `model.safetensors`, and that model's `epoch3.pt`."""
    tokenizer = build_tokenizer()
    model = build_gpt2(len(tokenizer))
    save_training_checkpoint(model, tokenizer, workdir / "epoch3.pt")
    folder = save_model_folder(model, tokenizer, workdir / "my_model")
    shutil.copyfile(folder / "model.safetensors", workdir / "model.safetensors")


def shims(folder: Path) -> Path:
    curl = shutil.which("curl")
    assert curl, "the README's tour needs curl"
    folder.mkdir()
    for name, script in (("curl", CURL_SHIM.format(curl=curl)), ("open", OPEN_SHIM)):
        path = folder / name
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def run_block(block: Block, url: str, workdir: Path, env: dict[str, str]) -> None:
    code = block.code.replace(README_URL, url)
    if block.language == "bash":
        command = ["bash", "-c", "set -euo pipefail\n" + code]
    else:
        command = [sys.executable, "-c", code]
    result = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_SECONDS,
    )
    assert result.returncode == 0, (
        f"{block} exited {result.returncode}\n--- code\n{code}"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )


@pytest.fixture(scope="module")
def made_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MadeServer]:
    served = start_make_serve(tmp_path_factory.mktemp("checkout"))
    yield served
    stop_group(served.process)


def test_every_command_block_runs_as_written_in_order(
    made_serve: MadeServer, tmp_path: Path
) -> None:
    missing = [tool for tool in ("zip", "jq") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the README's tour uses {', '.join(missing)}, not installed here")
    workdir = tmp_path / "reader"
    workdir.mkdir()
    reader_files(workdir)
    venv_bin = Path(sys.executable).parent
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("CKPT_")},
        "PATH": os.pathsep.join(
            [str(shims(tmp_path / "shims")), str(venv_bin), os.environ["PATH"]]
        ),
        "CKPT_URL": made_serve.url,
        "CKPT_DATA_DIR": str(made_serve.data_dir),  # `ckpt keys` works on the server's database
    }
    for block in runnable_blocks():
        run_block(block, made_serve.url, workdir, env)
