"""The embedding capability memory needs; implemented in ``serving`` and wired by ``app``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors."""

    @property
    def model_name(self) -> str:
        """A stable name of the model; namespaces remember it so vectors stay comparable."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), dimension) float32, each row L2-normalised."""
        ...


class PassageScorer(Protocol):
    """Scores how well each passage answers a query, reading both together (a cross-encoder);
    higher is better. Used to rerank the first stage of recall."""

    @property
    def name(self) -> str:
        """The model's name, as reported with results."""
        ...

    def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One score per passage, in order."""
        ...
