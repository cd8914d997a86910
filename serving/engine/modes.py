"""The engine's attention modes by name, and :func:`make_mode`.

``full`` is exact attention (:mod:`serving.engine.attention`); ``blocks`` (landmark block
selection, :mod:`serving.engine.selection`) and ``retrieval`` (RetrievalAttention,
:mod:`serving.engine.retrieval`) are imported only when chosen. This module sits above all
three, so the modes import :mod:`serving.engine.attention` and never the other way round. The
names are :data:`serving.kernels.config.MODES`, whose settings are checked when the config is
built; a mode checks only what depends on the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from serving.engine.attention import AttentionMode, FullAttention, ModeContext


def _blocks(context: ModeContext) -> AttentionMode:
    from serving.engine.selection import BlockAttention

    return BlockAttention(context)


def _retrieval(context: ModeContext) -> AttentionMode:
    from serving.engine.retrieval import RetrievalAttention

    return RetrievalAttention(context)


MODES: Mapping[str, Callable[[ModeContext], AttentionMode]] = MappingProxyType(
    {"full": lambda context: FullAttention(), "blocks": _blocks, "retrieval": _retrieval}
)
"""Attention modes by name (read-only)."""


def make_mode(name: str, context: ModeContext) -> AttentionMode:
    """The attention mode ``name`` for a model; ValueError names the known ones."""
    try:
        factory = MODES[name]
    except KeyError:
        raise ValueError(f"attention mode {name!r} is unknown; known: {sorted(MODES)}") from None
    return factory(context)
