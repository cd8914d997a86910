"""An attention backend for registry tests: vLLM's CPU backend under another class name.

Imported only inside the vLLM venv (it imports vLLM at module level), never by pytest itself.
"""

from __future__ import annotations

from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend


class StubAttentionBackend(CPUAttentionBackend):
    """Behaves as CPU_ATTN; only its path differs, so a test can see which class vLLM picked."""
