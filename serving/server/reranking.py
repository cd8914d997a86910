"""The server's ``rerank`` extension: a completion or chat request reranked with RankGen.

Request (completions and chat)::

    "rerank": {"method": "sample" | "beam", "scorer": "<name>", "samples": 10, "beam": 2,
               "step_tokens": 20, "top_p": 0.9, "runners_up": 0}

Every key is optional (defaults: RankGen's beam search, N=10, B=2, L=20; ``top_p`` = the
request's ``top_p`` if set, else 0.9; the scorer = the server's default, ``embedder``). The
request's ``max_tokens`` (default 115, RankGen's max_length), ``temperature``, ``top_k``,
``min_p``, ``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``, ``seed`` and
``stop`` apply to the candidates. The reply is an ordinary completion with one choice, the
chosen text, plus::

    "rerank": {"method", "scorer", "score", "candidates", "steps",
               "generation_seconds", "scoring_seconds",
               "runners_up": [{"text", "score"}, ...]}   # only when runners_up > 0

``usage.completion_tokens`` counts every sampled token, discarded candidates included.
Streaming, ``n`` > 1, logprobs, echo, min_tokens and structured outputs cannot be combined with
it (400).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from serving.llm import TokenLevelLLM
from serving.rerank.config import RerankConfig
from serving.rerank.decoders import RerankResult, decode
from serving.rerank.generators import TokenGenerator
from serving.rerank.scorers import RerankerPool
from serving.server.schemas import ChatRequest, CompletionRequest, Request

PAPER_TOP_P = 0.9


def refuse_combinations(body: Request) -> None:
    """ValueError naming the first request field that cannot go with ``rerank``."""
    clashes = {
        "stream": body.stream,
        "n > 1": body.n > 1,
        "prompt_logprobs": body.prompt_logprobs is not None,
        "structured_outputs": body.structured_outputs is not None,
        "response_format": body.response_format is not None
        and body.response_format.get("type") != "text",
        "logprobs": (isinstance(body, CompletionRequest) and body.logprobs is not None)
        or (isinstance(body, ChatRequest) and body.logprobs),
        "echo": isinstance(body, CompletionRequest) and body.echo,
        "min_tokens": body.min_tokens > 0,  # per step or per continuation? neither is clear
    }
    for name, clash in clashes.items():
        if clash:
            raise ValueError(
                f"rerank cannot be combined with {name}: it returns one chosen, complete "
                f"choice; drop {name} (use rerank.samples for more candidates)"
            )


def rerank_config(body: Request, default_scorer: str) -> RerankConfig:
    """The decoding the request asks for; ValueError with the bad option named."""
    options = body.rerank
    assert options is not None
    if body.max_tokens == 0:
        raise ValueError("max_tokens=0 generates nothing to rerank; give max_tokens >= 1")
    top_p = options.top_p
    if top_p is None:
        top_p = body.top_p if "top_p" in body.model_fields_set else PAPER_TOP_P
    defaults = RerankConfig()
    return RerankConfig(
        method=options.method,
        scorer=options.scorer or default_scorer,
        samples=options.samples,
        beam=options.beam,
        step_tokens=options.step_tokens,
        max_tokens=body.max_tokens or defaults.max_tokens,
        top_p=top_p,
        temperature=body.temperature,
        top_k=max(body.top_k, 0),
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        runners_up=options.runners_up,
    )


async def rerank_ids(
    llm: TokenLevelLLM,
    scorers: RerankerPool,
    body: Request,
    ids: Sequence[int],
    prefix: str,
    default_scorer: str,
) -> RerankResult:
    """Run the reranked generation of prompt token ``ids`` (scored against ``prefix``).

    Raises ValueError (bad options), ``UnknownScorer``, ``ModelNotAvailable`` (scorer weights
    missing), ``RequestRejected`` (too long for the context) and ``EngineFailed``.
    """
    refuse_combinations(body)
    config = rerank_config(body, default_scorer)
    generator = TokenGenerator(llm, ids)
    generator.check(config.max_tokens)
    reranker = await asyncio.to_thread(scorers.get, config.scorer)  # a first load is slow
    stop = tuple(body.stop or ())
    return await decode(generator, reranker, prefix, config, seed=body.seed, stop=stop)


def rerank_field(result: RerankResult, runners_up: bool) -> dict[str, Any]:
    """The reply's ``rerank`` extension object (``runners_up`` when the client asked)."""
    field: dict[str, Any] = {
        "method": result.method,
        "scorer": result.scorer,
        "score": result.score,
        "candidates": result.candidates,
        "steps": result.steps,
        "generation_seconds": round(result.generation_seconds, 4),
        "scoring_seconds": round(result.scoring_seconds, 4),
    }
    if runners_up:
        field["runners_up"] = [{"text": r.text, "score": r.score} for r in result.runners_up]
    return field


def rerank_reply(
    body: Request, served: str, prompt_tokens: int, result: RerankResult, *, chat: bool
) -> dict[str, Any]:
    """The completion (``chat=False``) or chat completion reply with the chosen text."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": result.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": result.text}
    else:
        choice["text"] = result.text
    tokens = result.completion_tokens
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": served,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": tokens,
            "total_tokens": prompt_tokens + tokens,
        },
        "rerank": rerank_field(result, body.rerank is not None and body.rerank.runners_up > 0),
    }
