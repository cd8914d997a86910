"""Log-probabilities in the wire shapes: OpenAI's completions and chat objects, vLLM's
``prompt_logprobs``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serving.llm import TokenLogprob


def completion_logprobs(entries: Sequence[TokenLogprob], start: int = 0) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object (``text_offset`` counted from ``start``)."""
    offsets, position = [], start
    for entry in entries:
        offsets.append(position)
        position += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) or None for e in entries],
        "text_offset": offsets,
    }


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """The chat ``logprobs`` object."""
    return {
        "content": [
            {
                "token": e.token,
                "logprob": e.logprob,
                "bytes": list(e.token.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in e.top
                ],
            }
            for e in entries
        ]
    }


def vllm_prompt_logprobs(entries: Sequence[TokenLogprob]) -> list[dict[str, Any] | None]:
    """vLLM's ``prompt_logprobs``: None for the first token, then token id → logprob/rank/text."""
    shaped: list[dict[str, Any] | None] = []
    for entry in entries:
        if entry.logprob is None:
            shaped.append(None)
            continue
        ranked = {tid: rank + 1 for rank, tid in enumerate(entry.top_ids)}
        row = {
            str(entry.token_id): {
                "logprob": entry.logprob,
                "rank": ranked.get(entry.token_id or -1),
                "decoded_token": entry.token,
            }
        }
        for (text, logprob), tid in zip(entry.top, entry.top_ids, strict=True):
            row.setdefault(
                str(tid), {"logprob": logprob, "rank": ranked[tid], "decoded_token": text}
            )
        shaped.append(row)
    return shaped
