"""Starting Mneme's own OpenAI-compatible server (``mneme llm serve``)."""

from __future__ import annotations

import logging

from app.runtime import open_embedder
from app.settings import Settings
from serving.engine.config import EngineConfig
from serving.local import LocalLLM
from serving.rerank.scorers import RerankerPool
from serving.server.app import ServerConfig, create_app

log = logging.getLogger(__name__)


def serve_torch(
    settings: Settings, config: EngineConfig, *, host: str, port: int, api_key: str | None
) -> None:
    """Load the model as ``config`` says and the embedder, then serve until interrupted."""
    import uvicorn

    llm = LocalLLM.load(config)
    try:
        embedder = open_embedder(settings)
        scorers = RerankerPool.standard(embedder, folders=settings.scorer_folders)
        server = ServerConfig(api_key=api_key, rerank_scorer=settings.rerank_scorer)
        app = create_app(llm, embedder, server, scorers)
        log.warning("serving %s on http://%s:%d/v1", llm.model, host, port)
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        llm.close()
