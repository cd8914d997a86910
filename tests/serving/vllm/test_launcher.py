"""The vLLM launcher's command line and process handling, against a fake vLLM server (no vLLM).

The fake (fake_api_server.py) sits where ``python -m vllm.entrypoints.openai.api_server`` finds
it, so the launcher runs its real command, probe, readiness checks and shutdown.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from serving.vllm.errors import VLLMNotInstalled, VLLMStartupFailed
from serving.vllm.launcher import (
    EXIT_INTERRUPTED,
    VLLMServer,
    VLLMServerConfig,
    build_command,
    probe_vllm,
    serve,
)
from tests.net import free_port
from tests.serving.vllm.conftest import REPO, process_alive

_PID = re.compile(r"fake vLLM pid=(\d+)")
_CHILD_PID = re.compile(r"fake vLLM child pid=(\d+)")


def fake_config(fake_vllm: Path, *extra: str, **fields: object) -> VLLMServerConfig:
    defaults: dict[str, object] = {
        "model": "tiny",
        "port": free_port(),
        "python": sys.executable,
        "extra_args": extra,
        "env": {"PYTHONPATH": str(fake_vllm)},
        "startup_timeout": 20.0,
        "stop_timeout": 5.0,
        "poll_interval": 0.05,
    }
    return VLLMServerConfig(**{**defaults, **fields})  # type: ignore[arg-type]


def pid_in(lines: list[str] | tuple[str, ...], pattern: re.Pattern[str] = _PID) -> int:
    for line in lines:
        if match := pattern.search(line):
            return int(match[1])
    raise AssertionError(f"no {pattern.pattern!r} in {lines}")


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# Command line and config


def test_command_runs_the_openai_server_module_with_args_verbatim() -> None:
    config = VLLMServerConfig(
        model="/models/llama",
        host="0.0.0.0",
        port=9001,
        python="/venvs/vllm/bin/python",
        api_key="secret",
        extra_args=("--max-model-len", "4096", "--served-model-name=llama", "--enforce-eager"),
    )
    assert build_command(config) == [
        "/venvs/vllm/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/llama",
        "--host",
        "0.0.0.0",
        "--port",
        "9001",
        "--api-key",
        "secret",
        "--middleware",
        "serving.vllm.rerank.RerankMiddleware",
        "--max-model-len",
        "4096",
        "--served-model-name=llama",
        "--enforce-eager",
    ]
    assert config.base_url == "http://127.0.0.1:9001/v1"  # clients reach 0.0.0.0 on loopback
    assert VLLMServerConfig(model="m", host="::", port=1).base_url == "http://[::1]:1/v1"
    assert VLLMServerConfig(model="m").python == sys.executable
    assert "--middleware" not in build_command(VLLMServerConfig(model="m", rerank=False))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"port": 0}, r"port=0 must be in \[1, 65535\]"),
        ({"model": " "}, "model must name"),
        ({"startup_timeout": 0}, "startup_timeout=0 must be positive"),
        ({"stop_timeout": -1}, "stop_timeout=-1 must be >= 0"),
        ({"extra_args": ("--port", "1")}, "extra_args sets --port; set the config's port"),
        ({"extra_args": ("--model=x",)}, "extra_args sets --model; set the config's model"),
        ({"extra_args": ("--api-key", "k")}, "set the config's api_key"),
    ],
)
def test_config_rejects_bad_values(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VLLMServerConfig(**{"model": "m", **fields})  # type: ignore[arg-type]


def test_config_keeps_its_own_read_only_env() -> None:
    env = {"VLLM_CPU_KVCACHE_SPACE": "1"}
    config = VLLMServerConfig(model="m", env=env)
    env["VLLM_CPU_KVCACHE_SPACE"] = "99"
    assert config.env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with pytest.raises(TypeError):
        config.env["X"] = "1"  # type: ignore[index]


# Missing vLLM


def test_a_python_without_vllm_is_refused_with_the_fix(tmp_path: Path) -> None:
    venv.create(tmp_path / "bare", with_pip=False)  # a real interpreter with nothing installed
    python = str(tmp_path / "bare" / "bin" / "python")
    server = VLLMServer(VLLMServerConfig(model="m", port=free_port(), python=python))
    with pytest.raises(VLLMNotInstalled) as caught:
        server.start()
    message = str(caught.value)
    assert f"vLLM is not installed in {python}" in message
    assert "mneme[vllm]" in message and ".ci/vllm-venv" in message and "--python" in message
    assert server.pid is None  # nothing was started


def test_a_python_that_does_not_exist_is_named(tmp_path: Path) -> None:
    python = str(tmp_path / "nowhere" / "python")
    with pytest.raises(VLLMNotInstalled, match=rf"cannot run {re.escape(python)} .*--python"):
        probe_vllm(python)


def test_probe_reads_the_version_from_package_metadata(fake_vllm: Path) -> None:
    assert probe_vllm(sys.executable, {"PYTHONPATH": str(fake_vllm)}) == "0.32.0"


# Start, forward output, stop


def test_start_waits_until_ready_forwards_output_and_stops(fake_vllm: Path) -> None:
    lines: list[str] = []
    config = fake_config(
        fake_vllm,
        "--fake-startup-delay",
        "0.5",
        "--served-model-name",
        "tiny chat",
        api_key="k3y",  # readiness only passes if the launcher sends it to /v1/models
        env={"PYTHONPATH": str(fake_vllm), "FAKE_MARK": "from-config"},
    )
    server = VLLMServer(config, on_line=lines.append)
    server.start()
    try:
        assert server.version == "0.32.0"
        answer = httpx.get(
            f"{config.base_url}/models", headers={"Authorization": "Bearer k3y"}, timeout=5
        )
        assert answer.json()["data"] == [{"id": "tiny"}]  # ready means it really answers
        argv = json.loads(next(line for line in lines if "argv=" in line).split("argv=", 1)[1])
        assert argv[-2:] == ["--served-model-name", "tiny chat"]  # verbatim, spaces kept
        assert "fake vLLM env FAKE_MARK=from-config" in lines
        assert "fake vLLM says hello on stderr" in lines  # stderr is forwarded too
        pid = pid_in(lines)
    finally:
        returncode = server.stop()
    assert returncode == 0  # it got SIGTERM and shut down by itself
    assert "fake vLLM: SIGTERM, shutting down" in lines
    assert not process_alive(pid)
    assert server.stop() == 0  # stopping twice is harmless


def test_default_sink_is_the_logger(fake_vllm: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="serving.vllm.launcher")
    with VLLMServer(fake_config(fake_vllm)):
        pass
    messages = [record.getMessage() for record in caplog.records]
    assert "fake vLLM says hello on stderr" in messages
    assert any(message.startswith("vLLM is ready at http://127.0.0.1:") for message in messages)


def test_early_exit_raises_with_the_last_twenty_lines(fake_vllm: Path) -> None:
    server = VLLMServer(fake_config(fake_vllm, "--fake-lines", "30", "--fake-exit-code", "3"))
    with pytest.raises(VLLMStartupFailed) as caught:
        server.start()
    error = caught.value
    assert error.returncode == 3
    assert len(error.log_tail) == 20
    assert error.log_tail[-1] == "fake vLLM: exiting with code 3"
    assert error.log_tail[0] == "fake line 12 of 30"
    assert "vLLM exited with status 3 before it was ready" in str(error)
    assert "fake line 30 of 30" in str(error) and "fake line 11 of 30" not in str(error)


def test_timeout_raises_names_the_last_check_and_stops_the_server(fake_vllm: Path) -> None:
    lines: list[str] = []
    config = fake_config(fake_vllm, "--fake-unhealthy", startup_timeout=1.0)
    server = VLLMServer(config, on_line=lines.append)
    started = time.monotonic()
    with pytest.raises(VLLMStartupFailed) as caught:
        server.start()
    assert time.monotonic() - started < 10
    assert "was not ready on http://127.0.0.1:" in str(caught.value)
    assert "within 1 s (last check: GET /health -> 503)" in str(caught.value)
    assert caught.value.returncode is None
    assert "fake vLLM: SIGTERM, shutting down" in lines  # stopped on the way out
    assert not process_alive(pid_in(lines))


def test_sigterm_ignored_escalates_to_sigkill(fake_vllm: Path) -> None:
    config = fake_config(fake_vllm, "--fake-ignore-sigterm", stop_timeout=0.5)
    server = VLLMServer(config)
    server.start()
    started = time.monotonic()
    assert server.stop() == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_stop_ends_processes_the_server_left_behind(fake_vllm: Path) -> None:
    lines: list[str] = []
    server = VLLMServer(fake_config(fake_vllm, "--fake-child"), on_line=lines.append)
    server.start()
    child = pid_in(lines, _CHILD_PID)
    assert process_alive(child)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5  # the child held the output pipe; no 5 s join wait
    assert wait_gone(child, 2.0)


def test_context_manager_stops_on_an_exception(fake_vllm: Path) -> None:
    lines: list[str] = []
    with (
        pytest.raises(RuntimeError, match="boom"),
        VLLMServer(fake_config(fake_vllm), on_line=lines.append),
    ):
        raise RuntimeError("boom")
    assert not process_alive(pid_in(lines))


@pytest.fixture
def ctrl_c() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt, as in a terminal, even when the test run was started in
    the background, where the shell hands it SIGINT ignored (and Python installs no handler)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("ctrl_c")
def test_interrupt_while_starting_stops_the_server(fake_vllm: Path) -> None:
    lines: list[str] = []

    def interrupt_once_serving(line: str) -> None:
        lines.append(line)
        if line.startswith("fake vLLM serving"):  # runs on the reader thread
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    server = VLLMServer(fake_config(fake_vllm, "--fake-unhealthy"), on_line=interrupt_once_serving)
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert server.returncode == 0
    assert not process_alive(pid_in(lines))


# serve(): the CLI's foreground loop


def test_serve_returns_the_servers_own_exit_status(fake_vllm: Path) -> None:
    lines: list[str] = []
    assert serve(fake_config(fake_vllm, "--fake-exit-after", "0.3"), on_line=lines.append) == 7
    assert any(line.startswith("mneme: vLLM 0.32.0 is serving tiny at http://") for line in lines)


_SERVE_MAIN = """
import json, sys
from serving.vllm.launcher import VLLMServerConfig, serve
fields = json.loads(sys.argv[1])
sys.exit(serve(VLLMServerConfig(**fields), on_line=lambda line: print(line, flush=True)))
"""


def _terminal_signals() -> None:
    """In the child, SIGINT as a terminal gives it (the test run may have it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, 143)]
)
def test_serve_stops_the_server_on_ctrl_c_and_sigterm(
    fake_vllm: Path, signum: signal.Signals, status: int
) -> None:
    fields = {
        "model": "tiny",
        "port": free_port(),
        "python": sys.executable,
        "env": {"PYTHONPATH": str(fake_vllm)},
        "poll_interval": 0.05,
    }
    mneme = subprocess.Popen(
        [sys.executable, "-c", _SERVE_MAIN, json.dumps(fields)],
        preexec_fn=_terminal_signals,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _Lines(mneme)
    try:
        lines.until(lambda line: line.startswith("mneme: vLLM"))
        mneme.send_signal(signum)
        assert mneme.wait(15) == status
        assert "fake vLLM: SIGTERM, shutting down" in lines.rest()
        assert wait_gone(pid_in(lines.seen))
    finally:  # leave no orphan behind when the test fails: the fake runs in its own session
        if mneme.poll() is None:
            mneme.kill()
            mneme.wait()
        for line in lines.seen:
            if (match := _PID.search(line)) and process_alive(int(match[1])):
                os.killpg(int(match[1]), signal.SIGKILL)


class _Lines:
    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._process = process
        self.seen: list[str] = []
        """Every line taken from the queue so far."""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._process.stdout.close()
        self._queue.put(None)

    def until(self, done: Callable[[str], bool], seconds: float = 20.0) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + seconds
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no such line within {seconds} s: {seen}") from None
            if line is None:
                raise AssertionError(f"the process ended first: {seen}")
            seen.append(line)
            self.seen.append(line)
            if done(line):
                return seen

    def rest(self) -> list[str]:
        lines: list[str] = []
        while (line := self._queue.get(timeout=10)) is not None:
            lines.append(line)
        self.seen += lines
        return lines
