"""A child process that ends with its parent, set up by the child itself.

`subprocess.Popen(preexec_fn=...)` is unsafe in a multithreaded parent (the server runs many
threads), so the parent only says who it is, in PARENT_PID_ENV, and the child asks the kernel
for a signal when that parent dies (Linux), then checks that the parent has not died already.
"""

from __future__ import annotations

import os
import signal
import sys

PARENT_PID_ENV = "CKPT_EXIT_WITH_PARENT_PID"
_PR_SET_PDEATHSIG = 1


def parent_env() -> dict[str, str]:
    """Environment entries that make a child started with them call exit_with_parent()."""
    return {PARENT_PID_ENV: str(os.getpid())}


def exit_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Called first thing in a child: `sig` arrives when the parent named in the env dies."""
    expected = os.environ.pop(PARENT_PID_ENV, None)
    if expected is None or sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != int(expected):  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
