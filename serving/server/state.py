"""What the server's routes serve, kept on ``app.state.server`` and reached as a dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from serving.local import LocalLLM
from serving.rerank.embedder import TextEmbedder
from serving.rerank.scorers import RerankerPool
from serving.server.errors import ApiError


@dataclass(frozen=True, slots=True)
class ServerState:
    """The model served, under which name, and what else the server offers."""

    llm: LocalLLM
    served: str
    """The name clients use for the model (the engine's own name is accepted too)."""
    scorers: RerankerPool
    """The rerank scorers offered."""
    rerank_scorer: str
    """Scorer for requests whose ``rerank`` field names none."""
    embedder: TextEmbedder | None = None
    """Served at /v1/embeddings, when given."""
    api_key: str | None = None
    """When set, every /v1 request needs ``Authorization: Bearer <key>``."""

    def check_model(self, name: str) -> None:
        """A 404 :class:`ApiError` unless ``name`` is the served model."""
        if name not in (self.served, self.llm.model):
            raise ApiError(
                404,
                f"the model {name!r} does not exist; this server serves {self.served!r}",
                "not_found_error",
            )


async def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


Served = Annotated[ServerState, Depends(server_state)]
"""A route parameter: the app's :class:`ServerState`."""
