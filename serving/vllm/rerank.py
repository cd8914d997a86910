"""Mneme's ``rerank`` request field on vLLM's OpenAI server, as an ASGI middleware.

``mneme llm serve --engine vllm`` starts vLLM with ``--middleware
serving.vllm.rerank.RerankMiddleware`` (pass the same flag to run vLLM yourself). The middleware
looks at POST /v1/completions and /v1/chat/completions: a body without ``rerank`` goes to vLLM
untouched (streaming included); one with it is answered here, with the same options, checks and
reply shape as Mneme's built-in server (serving/server/reranking.py).

The candidates are sampled by vLLM itself, over HTTP to the address the request came in on, with
the caller's headers (so vLLM's ``--api-key`` applies) and the request's own fields: every
sampling knob vLLM knows (top_k, min_p, presence/frequency/repetition penalties, ...) shapes
the candidates. Each beam of a step is one request with ``n`` = samples, all beams sent
together, so vLLM batches the step and its prefix cache keeps the prompt's KV blocks from step
to step. Beam search over chat continues the partial assistant reply with vLLM's
``continue_final_message``.

Scorers, loaded on first use in the API server process and kept: ``embedder`` (needs
sentence-transformers in vLLM's Python), the published RankGen checkpoints, and local RankGen
folders named in ``MNEME_RERANK_FOLDERS`` (``name=/path,name2=/path2``). A request naming no
scorer gets ``MNEME_RERANK_SCORER`` (default ``embedder``, the one scorer that needs no
checkpoint).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from typing import Any

import httpx
from pydantic import ValidationError

from serving.errors import ModelNotAvailable, ServingError
from serving.llm import ChatMessage, SamplingParams
from serving.rerank.config import RerankConfig
from serving.rerank.decoders import Beam, RerankResult, Sample, Step, decode, gather_all
from serving.rerank.errors import RerankError
from serving.rerank.generation import prefix_text
from serving.rerank.scorers import FOLDERS_VARIABLE, RerankerPool, scorer_folders
from serving.server.disconnect import ClientGone, unless_disconnected
from serving.server.reranking import refuse_combinations, rerank_config, rerank_reply
from serving.server.schemas import (
    ChatRequest,
    CompletionRequest,
    error_body,
    validation_message,
)

log = logging.getLogger("vllm.plugins.mneme.rerank")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SCORER_VARIABLE = "MNEME_RERANK_SCORER"
LOOPBACK_VARIABLE = "MNEME_RERANK_LOOPBACK"
ROUTES = {"/v1/completions": False, "/v1/chat/completions": True}
"""The routes that take ``rerank``, and whether each is chat."""
FORWARDED_HEADERS = ("authorization", "x-request-id")
"""Caller headers the candidate requests carry (vLLM's auth applies to them)."""
_NOT_FORWARDED = ("rerank", "stream", "stream_options", "max_completion_tokens", "echo")


class Refused(ServingError):
    """A reply to send instead of a reranked completion: an error status and body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status, self.body = status, body

    @classmethod
    def invalid(cls, message: str) -> Refused:
        return cls(400, error_body(400, message, "BadRequestError"))


def environment_pool(environ: Mapping[str, str] = os.environ) -> RerankerPool:
    """The standard scorers plus the RankGen folders named in ``MNEME_RERANK_FOLDERS``."""
    try:
        folders = scorer_folders(environ.get(FOLDERS_VARIABLE))
    except ValueError as err:
        raise ValueError(f"{FOLDERS_VARIABLE}: {err}") from err
    return RerankerPool.standard(folders=folders)


class LoopbackGenerator:
    """Candidates sampled by the vLLM server this middleware runs in, over HTTP.

    ``body`` is the caller's request without Mneme's fields; every candidate request is it with
    the prompt (or the partial reply) extended by the beam's text and the step's sampling.
    """

    def __init__(
        self, client: httpx.AsyncClient, path: str, body: Mapping[str, Any], *, chat: bool
    ) -> None:
        self.client, self.path, self.chat = client, path, chat
        self.body = {k: v for k, v in body.items() if k not in _NOT_FORWARDED}
        self.prompt_tokens: int | None = None
        self.model: str | None = None

    def _request(self, beam: Beam, params: SamplingParams) -> dict[str, Any]:
        body = {
            **self.body,
            "n": params.n,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed,
            "stop": list(params.stop),
        }
        if not beam.text:
            return body
        if not self.chat:
            return {**body, "prompt": body["prompt"] + beam.text}
        messages = list(body["messages"])
        last = messages[-1] if messages else {}
        if body.get("continue_final_message") and last.get("role") == "assistant":
            # the caller continues its own partial reply: the beam extends that one
            messages[-1] = {**last, "content": _text_of(last.get("content")) + beam.text}
        else:
            messages.append({"role": "assistant", "content": beam.text})
        return {
            **body,
            "messages": messages,
            "continue_final_message": True,
            "add_generation_prompt": False,
        }

    async def _one(self, beam: Beam, params: SamplingParams) -> tuple[tuple[Sample, ...], int]:
        reply = await self.client.post(self.path, json=self._request(beam, params))
        try:
            answer = reply.json()
        except ValueError:
            answer = error_body(reply.status_code, reply.text, "server_error")
        if reply.status_code != 200:
            raise Refused(reply.status_code, answer)
        usage = answer.get("usage") or {}
        if not beam.text and self.prompt_tokens is None:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.model = answer.get("model")
        samples = []
        for choice in answer["choices"]:
            text = choice["message"]["content"] if self.chat else choice["text"]
            ended = choice.get("finish_reason") == "stop"
            samples.append(Sample(beam.text + (text or ""), (), ended))
        return tuple(samples), int(usage.get("completion_tokens") or 0)

    async def sample(self, beams: Sequence[Beam], params: SamplingParams) -> Step:
        parts = await gather_all(self._one(b, params) for b in beams)
        return Step(tuple(p[0] for p in parts), sum(p[1] for p in parts))


class RerankMiddleware:
    """Answers completions and chat requests that carry ``rerank``; passes the rest to vLLM.

    ``scorers`` defaults to :func:`environment_pool`, ``default_scorer`` to
    ``MNEME_RERANK_SCORER`` (else ``embedder``).
    """

    def __init__(
        self,
        app: ASGIApp,
        scorers: RerankerPool | None = None,
        default_scorer: str | None = None,
    ) -> None:
        self.app = app
        self.scorers = scorers or environment_pool()
        self.default_scorer = (
            default_scorer or os.environ.get(SCORER_VARIABLE) or RerankConfig().scorer
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in ROUTES:
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left before it finished sending
        body = None
        if b'"rerank"' in raw:  # most requests: no JSON parsed here at all
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                body = None  # not JSON (or absurdly nested): vLLM answers it
        if not isinstance(body, dict) or body.get("rerank") is None:
            await self.app(scope, _replay(raw, receive), send)
            return
        try:
            reply = await unless_disconnected(
                self.rerank(scope, body, chat=ROUTES[scope["path"]]), receive
            )
            status = 200
        except ClientGone:
            return  # nobody to answer; vLLM aborts the sampling requests that were in flight
        except Refused as refused:
            status, reply = refused.status, refused.body
        except httpx.HTTPError as err:  # this server did not answer its own sampling requests
            message = f"rerank could not sample from this server ({type(err).__name__}: {err})"
            status, reply = 502, error_body(502, message, "server_error")
        except Exception as err:  # the request's edge: an error reply, never a bare 500 page
            log.exception("rerank failed")
            status, reply = 500, error_body(500, f"rerank failed: {err}", "server_error")
        await _send_json(send, status, reply)

    async def rerank(self, scope: Scope, body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        """The reranked reply to ``body``; :class:`Refused` with the error reply otherwise."""
        headers = {k: v for k, v in _headers(scope).items() if k in FORWARDED_HEADERS}
        async with httpx.AsyncClient(
            base_url=_own_url(scope), headers=headers, timeout=None, trust_env=False
        ) as client:
            await _check_access(client)  # vLLM's --api-key first, as for any other request
            request, config = self._checked(body, chat=chat)
            try:
                reranker = await asyncio.to_thread(self.scorers.get, config.scorer)
            except (RerankError, ModelNotAvailable) as err:
                raise Refused.invalid(str(err)) from err
            if isinstance(request, CompletionRequest):
                prefix = str(request.prompt)
            else:
                prefix = prefix_text([ChatMessage(m.role, m.content) for m in request.messages])
            generator = LoopbackGenerator(client, scope["path"], body, chat=chat)
            result: RerankResult = await decode(
                generator, reranker, prefix, config, seed=request.seed, stop=request.stop or ()
            )
        served = generator.model or request.model
        return rerank_reply(request, served, generator.prompt_tokens or 0, result, chat=chat)

    def _checked(
        self, body: dict[str, Any], *, chat: bool
    ) -> tuple[CompletionRequest | ChatRequest, RerankConfig]:
        """The validated request and its decoding; :class:`Refused` (400) naming the problem."""
        if chat and "max_tokens" not in body and "max_completion_tokens" in body:
            body = {**body, "max_tokens": body["max_completion_tokens"]}
        try:
            request = (ChatRequest if chat else CompletionRequest).model_validate(body)
        except ValidationError as err:
            raise Refused.invalid(validation_message(err.errors())) from err
        if isinstance(request, CompletionRequest) and not isinstance(request.prompt, str):
            raise Refused.invalid(
                "rerank needs a text prompt (scorers read text); send the prompt as a string"
            )
        try:
            refuse_combinations(request)
            return request, rerank_config(request, self.default_scorer)
        except ValueError as err:
            raise Refused.invalid(str(err)) from err


async def _check_access(client: httpx.AsyncClient) -> None:
    reply = await client.get("/v1/models")
    if reply.status_code in (401, 403):
        try:
            answer = reply.json()
        except ValueError:
            answer = error_body(reply.status_code, reply.text, "AuthenticationError")
        raise Refused(reply.status_code, answer)


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _own_url(scope: Scope) -> str:
    """The base URL this server samples from: ``MNEME_RERANK_LOOPBACK`` if set (a server behind
    TLS: its https URL), else plain HTTP to the socket the request came in on. Not the request's
    scheme: behind a local TLS proxy uvicorn reports the proxy's."""
    if configured := os.environ.get(LOOPBACK_VARIABLE):
        return configured.rstrip("/")
    server = scope.get("server")
    if not server or server[1] is None:
        raise Refused(
            500,
            error_body(
                500, "rerank needs the server on a TCP address, not a socket", "server_error"
            ),
        )
    host, port = server
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body; None if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already read body first, then whatever comes next."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replayed


async def _send_json(send: Send, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _text_of(content: Any) -> str:
    """A chat message's text: a string, or OpenAI's list of text parts."""
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")
