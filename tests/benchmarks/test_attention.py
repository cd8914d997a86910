"""The attention benchmark's layer stacks, dtypes and devices at a tiny shape, and the GPU
script's shell (issue 16, "one GPU script"). Only ``test_tiny_stack_on_cuda`` needs CUDA (and
``benchmarks/gpu.sh`` runs it before the 8B-shaped benchmark); the rest runs on a CPU."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.attention import BLOCK_METHODS, Target, caption, main, markdown

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.sh"
# 2 KV heads x 2 query heads each x dim 32 at the shortest context the CLI takes
TINY = ["--context", "8192", "--kv-heads", "2", "--group", "2", "--dim", "32", "--repeats", "1"]


def run_json(capsys: pytest.CaptureFixture[str], *options: str) -> list[dict[str, Any]]:
    """The rows ``--json`` prints for the tiny shape and ``options``."""
    main([*TINY, *options, "--json"])
    rows: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return rows


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_two_layer_stack_on_cpu(capsys: pytest.CaptureFixture[str], dtype: str) -> None:
    rows = run_json(capsys, "--layers", "2", "--retrieval-layers", "1", "--dtype", dtype)
    assert [row["method"] for row in rows] == ["full", *BLOCK_METHODS, "retrieval"]
    assert [row["layers"] for row in rows] == [2, 2, 2, 2, 1]
    full = rows[0]
    element = 4 if dtype == "float32" else 2
    # full reads every key and value of both layers
    assert full["memory_mb"] == pytest.approx(2 * 2 * 8192 * 2 * 32 * element / 2**20)
    assert (full["keys_touched"], full["recall_top100"]) == (1.0, 1.0)
    if dtype == "float32":
        assert full["rel_error"] == 0.0  # the float32 reference is full attention itself
    else:
        assert 0 < full["rel_error"] < 1e-2  # bfloat16 SDPA's own rounding
    for row in rows:
        step, per_token = row["step_ms"], row["ms_per_token"]
        assert per_token == pytest.approx(step * 2 / row["layers"])  # scaled to 2 layers
        assert row["speedup_vs_full"] == pytest.approx(full["ms_per_token"] / per_token)
        assert row["peak_mb"] is None  # accelerator memory: CUDA only
    for row in rows[1:]:  # every sparse method finds the planted needle and reads less
        assert row["recall_top100"] == 1.0
        assert 0 < row["keys_touched"] < 0.4
        assert row["rel_error"] < 0.02  # head dim 32: attention is less peaked
        assert row["memory_mb"] < full["memory_mb"] / 2


def test_batch_of_two_layers_through_the_engine_modes(capsys: pytest.CaptureFixture[str]) -> None:
    options = ("--batch", "2", "--layers", "2", "--retrieval-layers", "1", "--dtype", "bfloat16")
    rows = run_json(capsys, *options)
    assert [row["method"] for row in rows] == ["full", "blocks", "blocks-quest", "retrieval"]
    assert [row["layers"] for row in rows] == [2, 2, 2, 1]
    for row in rows:
        assert row["batch"] == 2
        per_token = row["ms_per_token"]
        assert per_token == pytest.approx(row["step_ms"] * 2 / row["layers"] / 2)
        assert row["rel_error"] < 0.05  # the modes answer in bfloat16
        assert row["peak_mb"] is None


@pytest.mark.gpu
@pytest.mark.parametrize("batch", ["0", "2"])
def test_tiny_stack_on_cuda(capsys: pytest.CaptureFixture[str], batch: str) -> None:
    """The CUDA path end to end (Triton kernels in the engine's modes, the graph on the CPU),
    before ``benchmarks/gpu.sh`` runs it at 8B shape."""
    options = ("--device", "cuda", "--dtype", "bfloat16", "--layers", "2", "--batch", batch)
    rows = run_json(capsys, *options, "--retrieval-layers", "1")
    assert rows[-1]["method"] == "retrieval" and rows[-1]["layers"] == 1
    stack_mb = 2 * 2 * 8192 * 2 * 32 * 2 * max(1, int(batch)) / 2**20  # both layers' KV
    for row in rows:
        assert row["peak_mb"] >= stack_mb  # the whole stack stays on the GPU
        assert row["rel_error"] < 0.05
        assert row.get("recall_top100", 1.0) >= 0.9  # CUDA draws other keys than a CPU run


def test_a_step_runs_every_layer_in_order_once_per_repeat() -> None:
    calls: list[int] = []

    def layer(index: int) -> torch.Tensor:
        calls.append(index)
        return torch.full((1,), float(index))

    steps = [lambda index=index: layer(index) for index in range(3)]
    outs, ms = Target(torch.device("cpu"), repeats=2).timed(steps)
    assert calls == [0, 1, 2] * 3  # warm-up, then two timed runs through the stack
    assert [float(out) for out in outs] == [0.0, 1.0, 2.0]
    assert ms >= 0


def test_caption_and_table_say_what_ran() -> None:
    options = argparse.Namespace(
        layers=32,
        retrieval_layers=4,
        kv_heads=8,
        group=4,
        dim=128,
        dtype="bfloat16",
        seed=0,
        repeats=3,
        threads=1,
        batch=0,
    )
    line = caption(options, Target(torch.device("cpu"), torch.bfloat16))
    assert line.startswith("CPU, bfloat16, 32 layer(s) x 8 KV heads x 4 query heads")
    assert "retrieval built and timed on 4 of 32 layers" in line
    table = markdown([{"method": "full", "step_ms": 1.23456, "peak_mb": None}])
    assert table.splitlines() == [
        "| method | step_ms | peak_mb |",
        "|---|---|---|",
        "| full | 1.235 | - |",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")
def test_cuda_without_a_gpu_exits_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*TINY, "--device", "cuda"])
    message = str(exited.value.code)
    assert message.startswith("--device cuda needs a CUDA GPU") and "\n" not in message
    assert capsys.readouterr().out == ""  # nothing ran


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--layers", "0"], "--layers 0 must be at least 1"),
        (["--retrieval-layers", "-1"], "--retrieval-layers -1 must be at least 0"),
        (["--workload", "perplexity", "--layers", "2"], "--workload perplexity runs on the CPU"),
    ],
)
def test_bad_options_exit_with_their_name(options: list[str], complaint: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*TINY, *options])
    assert str(exited.value.code).startswith(complaint)


def test_gpu_script_is_valid_bash_and_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="an NVIDIA GPU is here")
def test_gpu_script_fails_fast_without_a_gpu(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={"PATH": os.environ["PATH"], "OUT": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "needs an NVIDIA GPU" in done.stdout  # stdout and the report get everything
    assert "needs an NVIDIA GPU" in (tmp_path / "gpu-bench.md").read_text()
