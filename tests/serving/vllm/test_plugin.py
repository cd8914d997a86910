"""Mneme's vLLM plugin: cheap to import, checked arguments, and (in the vLLM venv) the real
attention-backend registry and CPU backend selection."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.vllm.plugin import LOADED_MESSAGE, register_attention_backend
from serving.vllm.versions import is_tested, release_of
from tests.serving.vllm.conftest import REPO

STUB = "tests.serving.vllm.attention_stub.StubAttentionBackend"
CPU_ATTN = "vllm.v1.attention.backends.cpu_attn.CPUAttentionBackend"


def test_importing_the_plugin_imports_nothing_heavy() -> None:
    # vLLM imports the plugin in every one of its processes.
    code = (
        "import json, sys, serving.vllm.plugin\n"
        "heavy = {'vllm', 'torch', 'transformers', 'httpx', 'openai', 'numpy'}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize(
    ("version", "release", "tested"),
    [
        ("0.32.0", "0.32", True),
        ("0.33.0+cu130", "0.33", True),
        ("v0.33.1rc1", "0.33", True),
        ("0.34.0", "0.34", False),
        ("0.3.2", "0.3", False),
        ("dev", None, False),
    ],
)
def test_tested_releases(version: str, release: str | None, tested: bool) -> None:
    assert release_of(version) == release
    assert is_tested(version) is tested


@pytest.mark.parametrize(
    ("name", "class_path", "message"),
    [
        ("MNEME-SPARSE", STUB, "name 'MNEME-SPARSE' must be a Python identifier"),
        ("MNEME_SPARSE", "StubAttentionBackend", "must look like 'package.module.ClassName'"),
        ("MNEME_SPARSE", "tests..Stub", "must look like"),
        ("MNEME_SPARSE", "mneme_missing.backends.Sparse", "'mneme_missing.backends' of .* found"),
        ("MNEME_SPARSE", "serving.missing.Sparse", "'serving.missing' of attention backend"),
    ],
)
def test_bad_backend_arguments_fail_before_vllm_is_touched(
    name: str, class_path: str, message: str
) -> None:
    # The main venv has no vLLM: reaching vLLM's registry would raise ModuleNotFoundError.
    with pytest.raises(ValueError, match=message):
        register_attention_backend(name, class_path)


_REGISTRY_CHECK = f"""
import contextlib, io, json, torch
from serving.vllm import plugin
from serving.vllm.errors import AttentionBackendConflict
from vllm.platforms.cpu import CpuPlatform
from vllm.v1.attention.backends.registry import AttentionBackendEnum
from vllm.v1.attention.selector import AttentionSelectorConfig

selector = AttentionSelectorConfig(
    head_size=64, dtype=torch.float32, kv_cache_dtype=None, block_size=128
)
out = {{}}
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    plugin.register()
    plugin.register()
out["announcements"] = stderr.getvalue().count({LOADED_MESSAGE!r})
plugin.register_attention_backend("MNEME_STUB", {STUB!r})
plugin.register_attention_backend("MNEME_STUB", {STUB!r})  # again: no error
out["new"] = AttentionBackendEnum["MNEME_STUB"].get_class().__name__
try:
    plugin.register_attention_backend("CPU_ATTN", {STUB!r})
except AttentionBackendConflict as error:
    out["conflict"] = str(error)
out["cpu_before"] = CpuPlatform.get_attn_backend_cls(None, selector, 4)
plugin.register_attention_backend("CPU_ATTN", {STUB!r}, replace=True)
out["cpu_after"] = CpuPlatform.get_attn_backend_cls(None, selector, 4)
plugin.register_attention_backend("CUSTOM", {STUB!r})  # an unbound placeholder: no replace
out["custom"] = AttentionBackendEnum.CUSTOM.get_path()
print(json.dumps(out))
"""


@pytest.mark.vllm
def test_backends_reach_vllms_registry_and_cpu_selection(vllm_python: Path) -> None:
    result = subprocess.run(
        [str(vllm_python), "-c", _REGISTRY_CHECK],
        cwd=REPO,  # so that tests.serving.vllm.attention_stub imports
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["announcements"] == 1  # register() is idempotent
    assert out["new"] == "StubAttentionBackend"
    assert out["conflict"] == (
        f"attention backend CPU_ATTN is bound to {CPU_ATTN}; pass replace=True to bind it to "
        + STUB
    )
    assert out["cpu_before"] == CPU_ATTN
    assert out["cpu_after"] == STUB  # what the CPU platform hands its workers
    assert out["custom"] == STUB
