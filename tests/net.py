"""Loopback helpers for tests: free ports, ASGI apps served for real on 127.0.0.1, and a
Chroma server (``chroma run``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread; yields its base URL (no trailing slash)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        raise RuntimeError("uvicorn did not start within 30 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def chroma_server(folder: Path) -> Iterator[tuple[str | None, str]]:
    """``chroma run`` on a free port storing in ``folder``; yields (url, reason): url is None,
    with the reason, when the CLI is missing or the server did not answer within 60 s."""
    import httpx

    beside_python = Path(sys.executable).parent / "chroma"  # the venv's bin is not always on PATH
    binary = str(beside_python) if beside_python.exists() else shutil.which("chroma")
    if binary is None:
        yield None, "the chroma CLI is not installed"
        return
    port = free_port()
    server = subprocess.Popen(
        [binary, "run", "--path", str(folder), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                yield None, "chroma run did not answer within 60 s"
                return
            time.sleep(0.2)
        yield url, "chroma run"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
