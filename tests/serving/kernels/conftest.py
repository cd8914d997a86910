"""Kernel tests run the Triton kernels through Triton's CPU interpreter when there is no CUDA.

``TRITON_INTERPRET`` is read when a kernel is decorated, which the kernel modules do lazily on
first use, so setting it here (before any test runs) is early enough.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The interpreter of the vLLM venv (MNEME_VLLM_PYTHON, default .venv-vllm/bin/python)."""
    repo = Path(__file__).resolve().parents[3]
    python = Path(os.environ.get("MNEME_VLLM_PYTHON") or repo / ".venv-vllm" / "bin" / "python")
    if not python.is_file():
        pytest.skip(f"no vLLM venv at {python}: run .ci/vllm-venv or set MNEME_VLLM_PYTHON")
    return python
