"""Long-context attention settings: one frozen config for the built-in engine's modes and for
vLLM's page selection, checked once, here, when it is built.

``mneme llm serve`` builds an :class:`AttentionConfig` from its options and hands it to the
built-in engine (``EngineConfig.attention``) or, as JSON (:meth:`AttentionConfig.to_json`), to
every vLLM process through an environment variable. No torch import: the vLLM plugin reads this
module in every vLLM process.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal, get_args

from serving.kernels.errors import AttentionSettingsError

AttentionMode = Literal["full", "blocks", "retrieval"]
"""Exact attention, block selection (landmark / Quest; vLLM: page selection) or retrieval."""
Representative = Literal["bounds", "mean"]
"""What stands for a block when it is scored: Quest's min/max bounds or InfLLM's key mean."""
Prefill = Literal["exact", "sparse"]
"""How prompt passes attend: in full (Quest, RetrievalAttention) or by selection too (InfLLM)."""
MemoryPositions = Literal["original", "fixed", "packed"]
"""Where selected far tokens are placed: where they were, InfLLM's fixed distance, or packed."""
KernelBackend = Literal["auto", "torch", "triton"]
"""Which decode kernels run (``serving.kernels.backend``): "auto" = Triton for CUDA tensors when
Triton is installed, the PyTorch twins otherwise; "torch" or "triton" force one (Triton on CPU
tensors needs Triton's interpreter, ``TRITON_INTERPRET=1``)."""

MODES: tuple[AttentionMode, ...] = get_args(AttentionMode)
REPRESENTATIVES: tuple[Representative, ...] = get_args(Representative)
POSITIONS: tuple[MemoryPositions, ...] = get_args(MemoryPositions)
PREFILLS: tuple[Prefill, ...] = get_args(Prefill)
KERNEL_BACKENDS: tuple[KernelBackend, ...] = get_args(KernelBackend)

_RETRIEVED_MINIMUM = (
    16  # retrieval: far tokens beyond the open segment a budget must leave room for
)


@dataclass(frozen=True, slots=True)
class AttentionConfig:
    """Which tokens each query attends to; every count in tokens. Invalid settings raise
    :class:`~serving.kernels.errors.AttentionSettingsError` naming the field."""

    mode: AttentionMode = "full"
    """"full" (exact), "blocks" (block selection; vLLM: page selection) or "retrieval"
    (RetrievalAttention's graph index; built-in engine only)."""
    budget: int = 2048
    """blocks/retrieval: cached tokens each query attends to (sinks + window + selected)."""
    sinks: int = 16
    """blocks/retrieval: first tokens (attention sinks) every query attends to exactly."""
    window: int = 256
    """blocks/retrieval: most recent tokens every query attends to exactly."""
    block_size: int = 16
    """blocks: tokens per block of the far context (Quest's page size); vLLM uses its pages."""
    representative: Representative = "bounds"
    """blocks: "bounds" (Quest's per-channel min/max, an upper bound of every key's score) or
    "mean" of each block's 4 keys most attended by recent queries (InfLLM)."""
    neighbours: int = 0
    """blocks: blocks on each side of a selected block also attended (EM-LLM's contiguity)."""
    prefill: Prefill = "exact"
    """blocks: "exact" (prompt passes attend in full, only decoding selects: Quest) or "sparse"
    (each run of 16 prompt queries selects its own blocks too: InfLLM); retrieval is exact."""
    retrieval_segment: int = 128
    """retrieval: far tokens added to the graph index at a time; the not-yet-indexed tail, up
    to this many tokens, is attended exactly."""
    retrieval_degree: int = 32
    """retrieval: most graph edges kept per key."""
    positions: MemoryPositions = "original"
    """Positions of selected far tokens: "original", "fixed" (InfLLM: all at distance
    window) or "packed" (landmark: contiguous just before the window)."""

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("representative", self.representative, REPRESENTATIVES)
        _choice("positions", self.positions, POSITIONS)
        _choice("prefill", self.prefill, PREFILLS)
        if self.mode == "retrieval" and self.prefill != "exact":
            raise AttentionSettingsError(
                "prefill='sparse' is for 'blocks'; RetrievalAttention attends in full at "
                "prefill (its graph is built from the prompt's queries): use prefill='exact'"
            )
        for name, least in (
            ("budget", 1),
            ("sinks", 0),
            ("window", 1),
            ("block_size", 1),
            ("neighbours", 0),
            ("retrieval_segment", 1),
            ("retrieval_degree", 2),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise AttentionSettingsError(f"{name}={value!r} must be a whole number")
            if value < least:
                raise AttentionSettingsError(f"{name}={value} must be at least {least}")
        needed = self.minimum_budget
        if self.budget < needed:
            far = needed - self.sinks - self.window
            sizes = "block_size" if self.mode == "blocks" else "retrieval_segment"
            raise AttentionSettingsError(
                f"budget={self.budget} is below what {self.mode!r} attention needs ({needed} = "
                f"{self.sinks} sinks + {self.window} window + {far} far tokens); raise "
                f"--attention-budget or lower sinks, window or {sizes}"
            )

    @property
    def minimum_budget(self) -> int:
        """Smallest budget the mode can work with: the sinks, the window and room for the far
        context (blocks: the open last block plus one selected block with its neighbours;
        retrieval: the not-yet-indexed segment plus a few retrieved keys); 0 for full."""
        if self.mode == "blocks":
            return self.sinks + self.window + (2 * self.neighbours + 2) * self.block_size
        if self.mode == "retrieval":
            return self.sinks + self.window + self.retrieval_segment + _RETRIEVED_MINIMUM
        return 0

    def check_paged(self) -> None:
        """Refuse what selection over a paged KV cache (vLLM's, ``serving.vllm.pages``) cannot do:
        it scores whole pages by their bounds and leaves keys where they are, so only modes
        "full" and "blocks" with "bounds" and "original" positions work there."""
        if self.mode == "retrieval":
            raise AttentionSettingsError(
                "mode='retrieval' is served by the built-in engine; vLLM's page selection offers "
                "'full' or 'blocks'"
            )
        if self.representative != "bounds":
            raise AttentionSettingsError(
                f"representative={self.representative!r}: vLLM's pages are scored by their "
                "bounds; use 'bounds'"
            )
        if self.positions != "original":
            raise AttentionSettingsError(
                f"positions={self.positions!r}: vLLM's pages keep their keys where they are; "
                "use 'original'"
            )
        if self.prefill != "exact":
            raise AttentionSettingsError(
                "prefill='sparse': vLLM's page selection runs at decode; prompt batches attend "
                "in full: use prefill='exact'"
            )

    @staticmethod
    def describe(name: str) -> str:
        """The one-line docstring of field ``name``, for command-line help (one text for both);
        KeyError for a name that is not a field."""
        return _field_docs()[name]

    def to_json(self) -> str:
        """This config as a JSON object of its fields (what :meth:`from_json` reads)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AttentionConfig:
        """The config in a JSON object of fields (missing ones take their defaults).
        AttentionSettingsError names bad JSON, an unknown field or a bad value."""
        try:
            raw: Any = json.loads(text)
        except json.JSONDecodeError as err:
            raise AttentionSettingsError(
                f"attention settings are not JSON ({err}): {text!r}"
            ) from err
        if not isinstance(raw, dict):
            raise AttentionSettingsError(f"attention settings must be a JSON object, got {text!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise AttentionSettingsError(
                f"unknown attention settings {unknown}; known: {', '.join(known)}"
            )
        return cls(**raw)


@functools.cache
def _field_docs() -> dict[str, str]:
    """Each field's docstring (the string right after it in the class body), on one line."""
    import ast
    import inspect

    docs = {field.name: "" for field in dataclasses.fields(AttentionConfig)}
    try:
        body = ast.parse(inspect.getsource(AttentionConfig)).body[0]
    except (OSError, TypeError):  # no source shipped: help without the texts
        return docs
    assert isinstance(body, ast.ClassDef)
    for field, doc in itertools.pairwise(body.body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def _choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise AttentionSettingsError(f"{name}={value!r} is not one of {', '.join(valid)}")
