"""``/v1/embeddings``: the server's embedder, in OpenAI's shape (floats or base64)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter

from serving.server.errors import ApiError
from serving.server.schemas import EmbeddingRequest
from serving.server.state import Served

router = APIRouter()


def wire_vector(vector: npt.NDArray[np.float32], encoding_format: str) -> str | list[float]:
    """One embedding as sent: little-endian float32 bytes in base64 (what the openai SDK asks
    for by default), or a list of floats."""
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    floats: list[float] = vector.tolist()
    return floats


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, server: Served) -> dict[str, Any]:
    embedder = server.embedder
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
    tokens = sum(len(server.llm.encode(t, special=False)) for t in texts)
    return {
        "object": "list",
        "model": embedder.model_name,
        "data": [
            {"object": "embedding", "index": i, "embedding": wire_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
