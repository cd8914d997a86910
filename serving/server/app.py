"""The OpenAI-compatible FastAPI app over the built-in engine.

Routes: ``/health``, ``/v1/models``, ``/tokenize`` (serving/server/models.py),
``/v1/completions``, ``/v1/chat/completions`` (both with SSE streaming;
serving/server/completions.py), ``/v1/embeddings`` (serving/server/embeddings.py). Response
shapes follow OpenAI; ``prompt_logprobs`` follows vLLM; the ``rerank`` request field is Mneme's
(RankGen reranking, serving/server/reranking.py). Every client mistake is a 4xx with an
OpenAI-style error body; a client that disconnects mid-stream cancels its generation.

The routes are module-level functions; what they serve is a :class:`ServerState` on
``app.state.server``, reached through the ``Served`` dependency (serving/server/state.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from serving.local import LocalLLM
from serving.rerank.config import RerankConfig
from serving.rerank.embedder import TextEmbedder
from serving.rerank.scorers import RerankerPool
from serving.server import completions, embeddings, models
from serving.server.errors import install
from serving.server.schemas import error_body
from serving.server.state import ServerState


@dataclass(frozen=True, slots=True)
class ServerConfig:
    served_model_name: str | None = None
    """Name clients use for the model; None = the engine's model name."""
    api_key: str | None = None
    """When set, every /v1 request needs ``Authorization: Bearer <key>``."""
    rerank_scorer: str = RerankConfig().scorer
    """Scorer for requests whose ``rerank`` field names none (see serving/server/reranking.py)."""


async def require_api_key(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """A 401 for a /v1 request without the server's key, when it has one (before routing, so
    an unknown /v1 path is a 401 too)."""
    key = request.app.state.server.api_key
    if key and request.url.path.startswith("/v1"):
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
            body = error_body(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "authentication_error",
            )
            return JSONResponse(body, status_code=401)
    return await call_next(request)


def create_app(
    llm: LocalLLM,
    embedder: TextEmbedder | None = None,
    config: ServerConfig | None = None,
    scorers: RerankerPool | None = None,
) -> FastAPI:
    """The app serving ``llm`` (and ``embedder`` at /v1/embeddings); ``scorers`` are the rerank
    scorers offered (default: the embedder's and RankGen's)."""
    config = config or ServerConfig()
    app = FastAPI(title="Mneme OpenAI-compatible server", version="1")
    app.state.server = ServerState(
        llm=llm,
        served=config.served_model_name or llm.model,
        scorers=scorers or RerankerPool.standard(embedder),
        rerank_scorer=config.rerank_scorer,
        embedder=embedder,
        api_key=config.api_key,
    )
    install(app)
    app.middleware("http")(require_api_key)
    for module in (models, completions, embeddings):
        app.include_router(module.router)
    return app
