"""A cross-encoder from a local folder that reranks recall's first stage (MNEME_CROSS_ENCODER).

A cross-encoder reads the query and a passage together and scores the pair, which ranks better
than comparing two separately made embeddings, at the cost of one forward pass per pair — so it
only reorders the few dozen passages the hybrid first stage found (Nogueira & Cho, 2019,
"Passage Re-ranking with BERT"). Nothing ships with Mneme, so it is off by default; any
sentence-transformers ``CrossEncoder`` folder works (for example a saved
``cross-encoder/ms-marco-MiniLM-L6-v2``). The model loads on first use, once, thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.errors import ModelNotAvailable


class CrossEncoderScorer:
    """:class:`memory.embedder.PassageScorer` over a sentence-transformers ``CrossEncoder``."""

    def __init__(self, folder: Path, *, batch_size: int = 32, max_length: int = 512) -> None:
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.max_length = max_length
        self._model: Any = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"cross-encoder:{self.folder.name}"

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                if not (self.folder / "config.json").is_file():
                    raise ModelNotAvailable(
                        f"MNEME_CROSS_ENCODER={self.folder} is not a model folder (no "
                        "config.json); point it at a saved sentence-transformers CrossEncoder, "
                        "or unset it to recall without reranking"
                    )
                try:
                    from sentence_transformers import CrossEncoder

                    self._model = CrossEncoder(
                        str(self.folder), max_length=self.max_length, local_files_only=True
                    )
                except (OSError, ValueError) as err:
                    raise ModelNotAvailable(
                        f"cannot load the cross-encoder in {self.folder} ({err}); point "
                        "MNEME_CROSS_ENCODER at a saved CrossEncoder folder, or unset it"
                    ) from err
            return self._model

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        model = self._load()
        scores = model.predict(
            [(query, passage) for passage in passages],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        return [float(s) for s in scores]
