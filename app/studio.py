"""What the web app holds for a process: one Reading + Writing, and a private event loop.

Streamlit reruns the page script on every interaction; this object lives across reruns (the web
app keeps it in Streamlit's resource cache: ``ui/studio.py``), so the LLM is loaded once and async
clients keep their loop. Errors Mneme knows are returned as messages for the page to show, never
raised into Streamlit.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from app.errors import KNOWN_ERRORS
from app.reading import Reading
from app.settings import Settings, load_settings
from app.story_runs import StoryRuns
from app.writing import Reranker, Writing, reranker_for
from base.bridge import LoopThread

T = TypeVar("T")


class Studio:
    """The app's services, built lazily; ``call`` runs work and turns known errors into text."""

    def __init__(self, reading: Reading | None = None) -> None:
        self.reading = reading or Reading(load_settings())
        self._writing: Writing | None = None
        self._runs: StoryRuns | None = None
        self._bridge = LoopThread("mneme-ui")

    @property
    def writing(self) -> Writing:
        if self._writing is None:
            self._writing = Writing(self.reading)
        return self._writing

    @property
    def runs(self) -> StoryRuns:
        """The writer's running steps and openings (they outlive the page that started them)."""
        if self._runs is None:
            self._runs = StoryRuns(self.writing)
        return self._runs

    def reranker(self, settings: Settings) -> Reranker:
        """The paragraph reranker ``settings`` name, loaded now over this studio's embedder (a
        clear error if it cannot be): the check before :meth:`reconfigure`."""
        return reranker_for(settings, self.reading.store.embedder)

    def reconfigure(self, settings: Settings) -> Studio:
        """A studio serving ``settings`` over this one's store (its documents and stories stay).
        This one's LLM is closed: serve from the new studio from now on."""
        studio = Studio(Reading(settings, store=self.reading.store))
        self.reading.close()
        return studio

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the studio's loop and wait for it (cancelled if the waiting thread
        is interrupted)."""
        return self._bridge.run(coroutine)

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start a coroutine on the studio's loop; the page polls the future (and can cancel)."""
        return self._bridge.submit(coroutine)

    def outcome(self, future: Future[T]) -> tuple[T | None, str | None]:
        """A finished future's (result, None), or (None, why not): the error's one line, or
        "stopped" when it was cancelled."""
        if future.cancelled():
            return None, "stopped"
        return self.call(future.result)

    def call(self, work: Callable[[], T]) -> tuple[T | None, str | None]:
        """(result, None), or (None, the one-line message) when Mneme knows the error."""
        try:
            return work(), None
        except KNOWN_ERRORS as err:
            return None, str(err)
