"""Start the app's server on a free loopback port, as ``pruning-explorer app`` does
(``explorer.cli.app_command``), and wait until it is healthy.

Shared by the browser tests, ``take_screenshots.py`` and the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    timeout: float = 60.0, cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """Start the app in a subprocess (from ``cwd``, default a neutral folder, with ``env`` added to
    the environment) and wait until it is healthy; return the process and its URL."""
    from explorer.cli import app_command

    port = free_port()
    cmd = app_command(port, "--server.address", "127.0.0.1")
    env = {"MALLOC_ARENA_MAX": "2", **os.environ, **(env or {})}  # as pruning-explorer app sets it
    # The server's output goes to a file, not a pipe nobody reads (a full pipe would block it).
    log = tempfile.NamedTemporaryFile("w+", prefix="explorer-server-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        cmd, cwd=cwd or "/", env=env, stdout=log, stderr=subprocess.STDOUT, text=True
    )
    proc.log_path = log.name  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            output = Path(log.name).read_text()[-4000:]
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {output}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(
                f"streamlit did not become healthy on port {port} within {timeout:.0f} s"
            )
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serve(
    timeout: float = 60.0, cwd: str | Path | None = None, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``start`` as a context manager: yield the URL, stop the server afterwards."""
    proc, url = start(timeout, cwd, env)
    try:
        yield url
    finally:
        stop(proc)
