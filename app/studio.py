"""What the web app holds for a session: one Reading + Writing, and a private event loop.

Streamlit reruns the page script on every interaction; this object lives across reruns (the page
caches it), so the LLM is loaded once and async clients keep their loop. Errors Mneme knows are
returned as messages for the page to show, never raised into Streamlit.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from app.errors import KNOWN_ERRORS
from app.reading import Reading
from app.settings import load_settings
from app.story_runs import StoryRuns
from app.writing import Writing

T = TypeVar("T")


_current: Studio | None = None


def current() -> Studio:
    """The process's studio: the one given to :func:`use`, else one built from settings."""
    global _current
    if _current is None:
        _current = Studio()
    return _current


def use(studio: Studio | None) -> None:
    """Serve the web app from ``studio`` (custom services, or tests); None resets."""
    global _current
    _current = studio


class Studio:
    """The app's services, built lazily; ``call`` runs work and turns known errors into text."""

    def __init__(self, reading: Reading | None = None) -> None:
        self.reading = reading or Reading(load_settings())
        self._writing: Writing | None = None
        self._runs: StoryRuns | None = None
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="mneme-ui", daemon=True).start()

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

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the studio's loop and wait for it."""
        return self.submit(coroutine).result()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start a coroutine on the studio's loop; the page polls the future (and can cancel)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

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
