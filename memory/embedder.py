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
