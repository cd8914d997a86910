"""Grammar-constrained decoding with xgrammar: a JSON schema becomes a token mask per step."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch


class GrammarCompiler:
    """Compiles JSON schemas for one tokenizer; compiled grammars are cached by schema."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int]) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids
        )
        self._compiler = xgrammar.GrammarCompiler(info)
        self.vocab_size = vocab_size
        self._compile = lru_cache(maxsize=64)(self._compile_uncached)

    def _compile_uncached(self, schema: str) -> Any:
        # Compact JSON: with free whitespace small models can emit blank runs until max_tokens.
        return self._compiler.compile_json_schema(schema, any_whitespace=False)

    def matcher(self, schema: dict[str, Any]) -> GrammarMatcher:
        # Keys keep their order: a model writes the fields in the schema's order (a reply's
        # reasoning before its conclusion), so sorting them would change what it generates.
        return GrammarMatcher(self._compile(json.dumps(schema)), self.vocab_size)


class GrammarMatcher:
    """The grammar state of one sequence."""

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        import xgrammar

        self._xgrammar = xgrammar
        self._matcher = xgrammar.GrammarMatcher(compiled)
        self._bitmask = xgrammar.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """(V,) logits with every token the grammar forbids set to -inf (in place)."""
        self._matcher.fill_next_token_bitmask(self._bitmask)
        row = logits[None, : self.vocab_size].float()
        self._xgrammar.apply_token_bitmask_inplace(row, self._bitmask.to(logits.device))
        masked = torch.full_like(logits, float("-inf"), dtype=torch.float32)
        masked[: self.vocab_size] = row[0]
        return masked

    def accept(self, token: int) -> None:
        if not self._matcher.accept_token(token):
            raise RuntimeError(f"token {token} violates the grammar it was sampled under")

    @property
    def finished(self) -> bool:
        return bool(self._matcher.is_terminated())
