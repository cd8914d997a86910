"""``/v1/completions`` and ``/v1/chat/completions``, with SSE streaming, logprobs, vLLM's
``prompt_logprobs`` and Mneme's ``rerank`` field (serving/server/reranking.py).

A client that disconnects mid-stream cancels its generation: leaving the stream closes the
engine's request, which frees its cache.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from serving.engine.engine import EngineRequest, PromptResult
from serving.errors import EngineFailed, ModelNotAvailable, RequestRejected
from serving.llm import ChatMessage, Choice, StreamDelta
from serving.rerank.decoders import RerankResult
from serving.rerank.errors import RerankError
from serving.rerank.generation import prefix_text
from serving.server.disconnect import ClientGone, unless_disconnected
from serving.server.errors import ApiError
from serving.server.logprobs import chat_logprobs, completion_logprobs, vllm_prompt_logprobs
from serving.server.reranking import rerank_ids, rerank_reply
from serving.server.schemas import ChatRequest, CompletionRequest, error_body
from serving.server.schemas import Request as Body
from serving.server.state import Served, ServerState

DEFAULT_MAX_TOKENS = 256

router = APIRouter()


def engine_request(
    server: ServerState,
    body: Body,
    ids: list[int],
    logprobs: int | None,
    prompt_logprobs: int | None,
) -> EngineRequest:
    """The engine request for a validated body; a 400 when the engine cannot serve it."""
    try:
        params = body.sampling(DEFAULT_MAX_TOKENS, logprobs)
        schema = body.json_schema()
    except ValueError as err:
        raise ApiError(400, str(err)) from err
    request = EngineRequest(tuple(ids), params, prompt_logprobs, schema)
    try:
        server.llm.check(request)
    except RequestRejected as err:
        raise ApiError(400, str(err)) from err
    return request


async def run(
    server: ServerState, request: EngineRequest
) -> tuple[PromptResult, tuple[Choice, ...], int]:
    """The prompt's result, the choices and the tokens generated; engine errors as 4xx/5xx."""
    try:
        result = await server.llm.run(request)
    except RequestRejected as err:
        raise ApiError(400, str(err)) from err
    except EngineFailed as err:
        raise ApiError(500, str(err), "server_error") from err
    return result.prompt, result.choices, result.completion_tokens


async def reranked(
    server: ServerState, body: Body, ids: list[int], prefix: str, http: Request
) -> RerankResult:
    """The request's ``rerank`` generation, stopped if the client leaves; every option or
    scorer problem is a 400."""
    work = rerank_ids(server.llm, server.scorers, body, ids, prefix, server.rerank_scorer)
    try:
        return await unless_disconnected(work, http.receive)
    except ClientGone as err:
        raise ApiError(499, str(err)) from err  # nginx's "client closed request"
    except (ValueError, RerankError, ModelNotAvailable, RequestRejected) as err:
        raise ApiError(400, str(err)) from err
    except EngineFailed as err:
        raise ApiError(500, str(err), "server_error") from err


def usage(prompt: PromptResult, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt.prompt_tokens + completion_tokens,
    }


def sse(
    server: ServerState, request: EngineRequest, shape: Callable[[StreamDelta], dict[str, Any]]
) -> StreamingResponse:
    """``request``'s pieces, each shaped into a chunk, as server-sent events ending in
    ``[DONE]``; an engine failure mid-stream is sent as an error event."""

    async def events() -> AsyncIterator[str]:
        try:
            async for delta in server.llm.stream(request):
                yield f"data: {json.dumps(shape(delta))}\n\n"
        except (RequestRejected, EngineFailed) as err:
            yield f"data: {json.dumps(error_body(500, str(err), 'server_error'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def prompt_ids(server: ServerState, body: CompletionRequest) -> list[int]:
    """The completion prompt's token ids (given as text or as ids, checked against the
    vocabulary)."""
    if isinstance(body.prompt, str):
        return server.llm.encode(body.prompt)
    vocabulary = server.llm.vocab_size
    if any(not 0 <= t < vocabulary for t in body.prompt):
        raise ApiError(400, f"prompt token ids must be in [0, {vocabulary})")
    return list(body.prompt)


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, http: Request, server: Served
) -> dict[str, Any] | StreamingResponse:
    server.check_model(body.model)
    ids = prompt_ids(server, body)
    if body.rerank is not None:
        prefix = (
            body.prompt if isinstance(body.prompt, str) else server.llm.decode(ids, special=False)
        )
        result = await reranked(server, body, ids, prefix, http)
        return rerank_reply(body, server.served, len(ids), result, chat=False)
    scoring = body.echo and body.max_tokens == 0  # legacy prompt scoring: generate nothing
    if scoring:
        body = body.model_copy(update={"max_tokens": 1})
    prompt_logprobs = body.prompt_logprobs
    if body.echo and body.logprobs is not None:
        prompt_logprobs = body.logprobs
    request = engine_request(server, body, ids, body.logprobs, prompt_logprobs)
    identity, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:

        def chunk(delta: StreamDelta) -> dict[str, Any]:
            logprobs = completion_logprobs(delta.logprobs) if delta.logprobs else None
            return {
                "id": identity,
                "object": "text_completion",
                "created": created,
                "model": server.served,
                "choices": [
                    {
                        "index": delta.index,
                        "text": delta.text,
                        "logprobs": logprobs,
                        "finish_reason": delta.finish_reason,
                    }
                ],
            }

        return sse(server, request, chunk)
    prompt, choices, produced = await run(server, request)
    prompt_text = body.prompt if isinstance(body.prompt, str) else server.llm.decode(ids)
    scored = None  # vLLM puts a completion's prompt_logprobs on every choice
    if body.prompt_logprobs is not None and prompt.prompt_logprobs is not None:
        scored = vllm_prompt_logprobs(prompt.prompt_logprobs)
    shaped = []
    for choice in choices:
        entries = [] if scoring else list(choice.logprobs or ())
        text = "" if scoring else choice.text
        if body.echo:
            text = prompt_text + text
            entries = list(prompt.prompt_logprobs or ()) + entries
        shaped.append(
            {
                "index": choice.index,
                "text": text,
                "logprobs": completion_logprobs(entries) if body.logprobs is not None else None,
                "finish_reason": choice.finish_reason,
                **({"prompt_logprobs": scored} if scored is not None else {}),
            }
        )
    return {
        "id": identity,
        "object": "text_completion",
        "created": created,
        "model": server.served,
        "choices": shaped,
        "usage": usage(prompt, produced),
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat(
    body: ChatRequest, http: Request, server: Served
) -> dict[str, Any] | StreamingResponse:
    server.check_model(body.model)
    messages = [ChatMessage(m.role, m.content) for m in body.messages]
    try:
        ids = server.llm.encode_chat(messages)
    except RequestRejected as err:
        raise ApiError(400, str(err)) from err
    if body.rerank is not None:
        result = await reranked(server, body, ids, prefix_text(messages), http)
        return rerank_reply(body, server.served, len(ids), result, chat=True)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    request = engine_request(server, body, ids, logprobs, body.prompt_logprobs)
    identity, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if body.stream:
        first: set[int] = set()

        def chunk(delta: StreamDelta) -> dict[str, Any]:
            message: dict[str, str] = {"content": delta.text}
            if delta.index not in first:
                first.add(delta.index)
                message["role"] = "assistant"
            return {
                "id": identity,
                "object": "chat.completion.chunk",
                "created": created,
                "model": server.served,
                "choices": [
                    {
                        "index": delta.index,
                        "delta": message,
                        "logprobs": chat_logprobs(delta.logprobs) if delta.logprobs else None,
                        "finish_reason": delta.finish_reason,
                    }
                ],
            }

        return sse(server, request, chunk)
    prompt, choices, produced = await run(server, request)
    reply: dict[str, Any] = {
        "id": identity,
        "object": "chat.completion",
        "created": created,
        "model": server.served,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.logprobs or ()) if body.logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(prompt, produced),
    }
    if body.prompt_logprobs is not None and prompt.prompt_logprobs is not None:
        reply["prompt_logprobs"] = vllm_prompt_logprobs(prompt.prompt_logprobs)
    return reply
