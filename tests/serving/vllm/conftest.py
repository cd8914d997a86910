"""Fixtures for the vLLM backend: a fake vLLM on PYTHONPATH, the vLLM venv, free ports."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FAKE_SERVER = Path(__file__).with_name("fake_api_server.py")


def process_alive(pid: int) -> bool:
    """Is ``pid`` running? A zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def fake_vllm(tmp_path: Path) -> Path:
    """A folder to put on PYTHONPATH where ``vllm.entrypoints.openai.api_server`` is the fake
    server and package metadata says vllm 0.32.0."""
    root = tmp_path / "fake-vllm"
    package = root / "vllm" / "entrypoints" / "openai"
    package.mkdir(parents=True)
    for folder in (root / "vllm", root / "vllm" / "entrypoints", package):
        (folder / "__init__.py").write_text("")
    shutil.copy(FAKE_SERVER, package / "api_server.py")
    metadata = root / "vllm-0.32.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0\n")
    return root


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The interpreter of the vLLM venv (MNEME_VLLM_PYTHON, default .venv-vllm/bin/python)."""
    python = Path(os.environ.get("MNEME_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")
    if not python.is_file():
        pytest.skip(
            f"no vLLM venv at {python}: run .ci/vllm-venv, or set MNEME_VLLM_PYTHON to a "
            "Python with vLLM"
        )
    return python
