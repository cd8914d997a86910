"""What the server serves: ``/health``, ``/v1/models`` and vLLM's ``/tokenize``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.server.schemas import TokenizeRequest
from serving.server.state import Served

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/models")
async def models(server: Served) -> dict[str, Any]:
    """The served model (with its context as vLLM's ``max_model_len``), then the embedder."""
    data = [
        {
            "id": server.served,
            "object": "model",
            "created": 0,
            "owned_by": "mneme",
            "max_model_len": server.llm.max_context,
        }
    ]
    if server.embedder is not None:
        name = server.embedder.model_name
        data.append({"id": name, "object": "model", "created": 0, "owned_by": "mneme"})
    return {"object": "list", "data": data}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, server: Served) -> dict[str, Any]:
    """vLLM's tokenizer endpoint: the prompt's token ids under the served model."""
    server.check_model(body.model)
    ids = server.llm.encode(body.prompt, special=body.add_special_tokens)
    return {"count": len(ids), "max_model_len": server.llm.max_context, "tokens": ids}
