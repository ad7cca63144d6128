"""The Jupyter servers the app and browser tests start: a free localhost port, a private Jupyter config,
a log file, a poll until the server answers, and a stop that takes its kernels down too, also on failure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jupyter_dirs(tmp: Path) -> dict:
    """Jupyter's config, data and runtime folders in ``tmp``: no user settings leak in."""
    return {f"JUPYTER_{name}_DIR": str(tmp / name.lower()) for name in ("CONFIG", "DATA", "RUNTIME")}


def server_env(tmp: Path) -> dict:
    """Config, data and runtime in a temp dir (jupyter_dirs); torch on one thread."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", **jupyter_dirs(tmp))


def log_tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running(args: list[str], tmp: Path, log: Path, ready: Callable[[], bool], timeout: float):
    """Start ``args`` in its own process group (output to ``log``) and yield the process once ``ready()``;
    fail with the log's tail if it exits or is not ready within ``timeout`` s. Always stopped afterwards."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=tmp, env=server_env(tmp), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_ready(proc, log, ready, timeout)
        yield proc
    finally:
        stop(proc)


def wait_until_ready(proc: subprocess.Popen, log: Path, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_tail(log)}", pytrace=False)
        try:
            if ready():
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    pytest.fail(f"server not up after {timeout} s:\n{log_tail(log)}", pytrace=False)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (it shuts its kernels down), SIGKILL if it hangs."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue
