"""The OpenAI-compatible FastAPI app over the built-in engine.

Routes: ``/health``, ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions`` (both with
SSE streaming), ``/v1/embeddings``. Response shapes follow OpenAI; ``prompt_logprobs`` follows
vLLM; the ``rerank`` request field is Mneme's (RankGen reranking, serving/server/reranking.py).
Every client mistake is a 4xx with an OpenAI-style error body; a client that disconnects
mid-stream cancels its generation.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from serving.engine.engine import EngineOutput, EngineRequest, PromptResult
from serving.errors import EngineFailed, ModelNotAvailable, RequestRejected
from serving.llm import ChatMessage, Choice, TokenLogprob
from serving.local import LocalLLM
from serving.rerank.config import RerankConfig
from serving.rerank.decoders import RerankResult
from serving.rerank.errors import RerankError
from serving.rerank.generation import prefix_text
from serving.rerank.scorers import RerankerPool
from serving.server.disconnect import ClientGone, unless_disconnected
from serving.server.reranking import rerank_ids, rerank_reply
from serving.server.schemas import (
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    TokenizeRequest,
    error_body,
    validation_message,
)
from serving.server.schemas import Request as Body

DEFAULT_MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class ServerConfig:
    served_model_name: str | None = None
    """Name clients use for the model; None = the engine's model name."""
    api_key: str | None = None
    """When set, every /v1 request needs ``Authorization: Bearer <key>``."""
    rerank_scorer: str = RerankConfig().scorer
    """Scorer for requests whose ``rerank`` field names none (see serving/server/reranking.py)."""


class ApiError(Exception):
    """A client error, answered as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def _top_dict(entry: TokenLogprob) -> dict[str, float]:
    return dict(entry.top)


def completion_logprobs(entries: Sequence[TokenLogprob], start: int = 0) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object."""
    offsets, position = [], start
    for entry in entries:
        offsets.append(position)
        position += len(entry.token)
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [_top_dict(e) or None for e in entries],
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


def create_app(
    llm: LocalLLM,
    embedder: Any | None = None,
    config: ServerConfig | None = None,
    scorers: RerankerPool | None = None,
) -> FastAPI:
    """The app serving ``llm`` (and ``embedder``, any object with ``model_name``/``embed``);
    ``scorers`` are the rerank scorers offered (default: the embedder's and RankGen's)."""
    config = config or ServerConfig()
    scorers = scorers or RerankerPool.standard(embedder)
    served = config.served_model_name or llm.model
    app = FastAPI(title="Mneme OpenAI-compatible server", version="1")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(error_body(err.status, err.message, err.kind), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        message = validation_message(err.errors())
        return JSONResponse(error_body(400, message, "invalid_request_error"), 400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(err.status_code, str(err.detail), "invalid_request_error"),
            status_code=err.status_code,
        )

    @app.middleware("http")
    async def _auth(request: Request, call_next: Any) -> Response:
        if config.api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                body = error_body(
                    401,
                    "missing or wrong API key: send 'Authorization: Bearer <key>'",
                    "authentication_error",
                )
                return JSONResponse(body, status_code=401)
        response: Response = await call_next(request)
        return response

    def check_model(name: str) -> None:
        if name not in (served, llm.model):
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server serves {served!r}",
                "not_found_error",
            )

    def spec(
        body: Body, ids: list[int], logprobs: int | None, prompt_logprobs: int | None
    ) -> EngineRequest:
        """The engine request for a validated body; a 400 when the engine cannot serve it."""
        try:
            params = body.sampling(DEFAULT_MAX_TOKENS, logprobs)
            schema = body.json_schema()
        except ValueError as err:
            raise ApiError(400, str(err)) from err
        request = EngineRequest(tuple(ids), params, prompt_logprobs, schema)
        try:
            llm.engine.check(request)
        except RequestRejected as err:
            raise ApiError(400, str(err)) from err
        return request

    async def run(request: EngineRequest) -> tuple[PromptResult, tuple[Choice, ...], int]:
        try:
            result = await llm.run(request)
        except RequestRejected as err:
            raise ApiError(400, str(err)) from err
        except EngineFailed as err:
            raise ApiError(500, str(err), "server_error") from err
        return result.prompt, result.choices, result.completion_tokens

    async def reranked(body: Body, ids: list[int], prefix: str, http: Request) -> RerankResult:
        """The request's ``rerank`` generation, stopped if the client leaves; every option or
        scorer problem is a 400."""
        work = rerank_ids(llm, scorers, body, ids, prefix, config.rerank_scorer)
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

    def sse(chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            try:
                async for chunk in chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
            except (RequestRejected, EngineFailed) as err:
                yield f"data: {json.dumps(error_body(500, str(err), 'server_error'))}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def stream(request: EngineRequest, shape: Any) -> AsyncIterator[dict[str, Any]]:
        async for item in llm.engine.generate(request):
            if isinstance(item, EngineOutput) and (
                item.text or item.finish_reason or item.logprobs
            ):
                yield shape(item)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [
            {
                "id": served,
                "object": "model",
                "created": 0,
                "owned_by": "mneme",
                "max_model_len": llm.engine.max_context,
            }
        ]
        if embedder is not None:
            data.append(
                {"id": embedder.model_name, "object": "model", "created": 0, "owned_by": "mneme"}
            )
        return {"object": "list", "data": data}

    @app.post("/v1/completions", response_model=None)
    async def completions(
        body: CompletionRequest, http: Request
    ) -> dict[str, Any] | StreamingResponse:
        check_model(body.model)
        if isinstance(body.prompt, str):
            ids = llm.encode(body.prompt)
        else:
            vocabulary = llm.engine.loaded.vocab_size
            if any(not 0 <= t < vocabulary for t in body.prompt):
                raise ApiError(400, f"prompt token ids must be in [0, {vocabulary})")
            ids = list(body.prompt)
        if body.rerank is not None:
            prefix = (
                body.prompt
                if isinstance(body.prompt, str)
                else llm.tokenizer.decode(ids, skip_special_tokens=True)
            )
            result = await reranked(body, ids, prefix, http)
            return rerank_reply(body, served, len(ids), result, chat=False)
        scoring = body.echo and body.max_tokens == 0  # legacy prompt scoring: generate nothing
        if scoring:
            body = body.model_copy(update={"max_tokens": 1})
        prompt_logprobs = body.prompt_logprobs
        if body.echo and body.logprobs is not None:
            prompt_logprobs = body.logprobs
        request = spec(body, ids, body.logprobs, prompt_logprobs)
        identity, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:

            def chunk(item: EngineOutput) -> dict[str, Any]:
                logprobs = completion_logprobs(item.logprobs) if item.logprobs else None
                return {
                    "id": identity,
                    "object": "text_completion",
                    "created": created,
                    "model": served,
                    "choices": [
                        {
                            "index": item.index,
                            "text": item.text,
                            "logprobs": logprobs,
                            "finish_reason": item.finish_reason,
                        }
                    ],
                }

            return sse(stream(request, chunk))
        prompt, choices, produced = await run(request)
        prompt_text = body.prompt if isinstance(body.prompt, str) else llm.tokenizer.decode(ids)
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
            "model": served,
            "choices": shaped,
            "usage": usage(prompt, produced),
        }

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, http: Request) -> dict[str, Any] | StreamingResponse:
        check_model(body.model)
        messages = [ChatMessage(m.role, m.content) for m in body.messages]
        try:
            ids = llm.encode_chat(messages)
        except RequestRejected as err:
            raise ApiError(400, str(err)) from err
        if body.rerank is not None:
            result = await reranked(body, ids, prefix_text(messages), http)
            return rerank_reply(body, served, len(ids), result, chat=True)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        request = spec(body, ids, logprobs, body.prompt_logprobs)
        identity, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            first: set[int] = set()

            def chunk(item: EngineOutput) -> dict[str, Any]:
                delta: dict[str, str] = {"content": item.text}
                if item.index not in first:
                    first.add(item.index)
                    delta["role"] = "assistant"
                return {
                    "id": identity,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": served,
                    "choices": [
                        {
                            "index": item.index,
                            "delta": delta,
                            "logprobs": chat_logprobs(item.logprobs) if item.logprobs else None,
                            "finish_reason": item.finish_reason,
                        }
                    ],
                }

            return sse(stream(request, chunk))
        prompt, choices, produced = await run(request)
        reply: dict[str, Any] = {
            "id": identity,
            "object": "chat.completion",
            "created": created,
            "model": served,
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

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
        """vLLM's tokenizer endpoint: the prompt's token ids under the served model."""
        check_model(body.model)
        ids = llm.encode(body.prompt, special=body.add_special_tokens)
        return {"count": len(ids), "max_model_len": llm.engine.max_context, "tokens": ids}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        if embedder is None:
            raise ApiError(404, "this server has no embedding model")
        if body.model not in (embedder.model_name, embedder.model_name.split("/")[-1]):
            raise ApiError(
                404,
                f"the embedding model {body.model!r} does not exist; this "
                f"server has {embedder.model_name!r}",
                "not_found_error",
            )
        texts: list[str] = list(body.input)
        vectors = await asyncio.to_thread(embedder.embed, texts)
        tokens = sum(len(llm.encode(t, special=False)) for t in texts)

        def encode(vector: Any) -> Any:
            if body.encoding_format == "base64":  # what the openai SDK asks for by default
                return base64.b64encode(vector.astype("<f4").tobytes()).decode()
            return vector.tolist()

        return {
            "object": "list",
            "model": embedder.model_name,
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v)}
                for i, v in enumerate(vectors)
            ],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app
