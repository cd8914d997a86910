"""``mneme llm serve --attention …``: options reach the engine, bad ones fail in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.net import free_port

MNEME = [sys.executable, "-c", "from app.cli import main; main()"]


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    return {**env, "MNEME_HOME": str(home)}


def refused(home: Path, *args: str) -> str:
    """``mneme llm serve ARGS`` must fail at once, in one line: its stderr."""
    done = subprocess.run(
        [*MNEME, "llm", "serve", *args],
        env=environment(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    return done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--attention", "sparse"],
            "'--attention': Value error, 'sparse' is not one of 'full', 'blocks', 'retrieval'",
        ),
        (["--engine", "tpu"], "'--engine': Value error, 'tpu' is not one of 'torch', 'vllm'"),
        (["--dtype", "half"], "'--dtype': Value error, 'half' is not one of 'auto', 'float32'"),
        (
            ["--attention-representative", "max"],
            "'--attention-representative': Value error, 'max' is not one of 'bounds', 'mean'",
        ),
    ],
)
def test_an_unknown_choice_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    assert message in refused(tmp_path, *args)


def test_prefix_cache_size_is_the_torch_engines(tmp_path: Path) -> None:
    stderr = refused(tmp_path, "--engine", "vllm", "--prefix-cache-tokens", "64")
    assert "--prefix-cache-tokens is the torch engine's" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attention", "retrieval"], "--attention retrieval is served by --engine torch"),
        (
            ["--attention", "blocks", "--attention-representative", "mean"],
            "representative='mean': vLLM's pages are scored by their bounds; use 'bounds'",
        ),
    ],
)
def test_vllm_refuses_what_its_pages_cannot_do(
    tmp_path: Path, args: list[str], message: str
) -> None:
    assert message in refused(tmp_path, "--engine", "vllm", *args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attention-window", "0"], "error: window=0 must be at least 1"),
        (["--attention-local", "0"], "error: window=0 must be at least 1"),  # its old name
        (
            ["--attention", "blocks", "--attention-budget", "100"],
            "error: budget=100 is below what 'blocks' attention needs (304 = 16 sinks + 256 "
            "window + 32 far tokens); raise --attention-budget",
        ),
        (
            ["--engine", "vllm", "--attention", "blocks", "--attention-sinks", "-1"],
            "error: sinks=-1 must be at least 0",
        ),
    ],
)
def test_bad_attention_settings_are_one_usage_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Checked before any model loads, with exit code 2 (usage), by either engine."""
    done = subprocess.run(
        [*MNEME, "llm", "serve", *args],
        env=environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


@pytest.mark.slow
def test_serves_completions_with_retrieval_attention(tmp_path: Path, tiny_llama: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            *MNEME,
            "llm",
            "serve",
            "--model",
            str(tiny_llama),
            "--port",
            str(port),
            "--attention",
            "retrieval",
            "--attention-budget",
            "700",
            "--attention-local",
            "64",
        ],
        env=environment(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 240
        while True:
            try:
                models = httpx.get(f"{base}/models", timeout=2)
                models.raise_for_status()
                break
            except httpx.HTTPError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.5)
        prompt = "The lantern swung in the wind above the harbour. " * 80  # ~900 tokens
        reply = httpx.post(
            f"{base}/completions",
            json={
                "model": models.json()["data"][0]["id"],
                "prompt": prompt,
                "max_tokens": 8,
                "temperature": 0,
            },
            timeout=120,
        )
        reply.raise_for_status()
        body = reply.json()
        assert body["usage"]["completion_tokens"] == 8
        assert body["usage"]["prompt_tokens"] > 700  # longer than the budget: retrieval ran
    finally:
        server.terminate()
        server.communicate(timeout=30)
