"""A process that dies (SIGKILL) between the SQL write and the vector write.

Run as ``python -m tests.memory.crash_writer FOLDER {add,edit,delete}``; used by test_crash.py.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from memory import ChromaVectorIndex, Database, MemoryStore, NewEpisode
from tests.fakes import HashEmbedder


class DiesBeforeIndexWrite(ChromaVectorIndex):
    """The real Chroma index, except the process is killed when the index is about to change."""

    def upsert(
        self, namespace_id: int, ids: Sequence[int], vectors: np.ndarray, versions: Sequence[int]
    ) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def delete(self, namespace_id: int, ids: Sequence[int]) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


def main(folder: Path, action: str) -> None:
    database = Database(f"sqlite:///{folder / 'mneme.db'}")
    store = MemoryStore(database, DiesBeforeIndexWrite(path=folder / "chroma"), HashEmbedder())
    first = store.episodes.page("book")[0]
    if action == "add":
        store.add("book", [NewEpisode(text="the treasure is buried under the old oak")])
    elif action == "edit":
        store.edit("book", first.id, text="the map was burned in the fireplace")
    elif action == "delete":
        store.delete("book", [first.id])
    sys.exit("not killed")  # pragma: no cover - reaching here is a test failure


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
