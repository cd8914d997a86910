"""``SyncAgent``: the thin blocking wrapper over :class:`agents.hiagent.Agent` for scripts and
Streamlit. Runs each call on one private event loop in a daemon thread; no logic of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from agents.events import Event
from agents.hiagent import Agent, AgentResult

T = TypeVar("T")


class SyncAgent:
    """Blocking ``run`` / ``resume`` / ``remember``; :meth:`cancel` (from any thread) stops the
    run in progress at its next turn, leaving the trajectory resumable."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="SyncAgent", daemon=True
        )
        self._thread.start()
        self._cancel: asyncio.Event | None = None

    def run(self, task: str, *, on_event: Callable[[Event], None] | None = None) -> AgentResult:
        cancel = self._new_cancel()
        return self._run(self.agent.run(task, on_event=on_event, cancel=cancel))

    def resume(
        self, trajectory_id: int, *, on_event: Callable[[Event], None] | None = None
    ) -> AgentResult:
        cancel = self._new_cancel()
        return self._run(self.agent.resume(trajectory_id, on_event=on_event, cancel=cancel))

    def remember(self, trajectory_id: int) -> list[Event]:
        return self._run(self.agent.remember(trajectory_id))

    def cancel(self) -> None:
        """Ask the run in progress to stop before its next turn (safe from any thread)."""
        cancel = self._cancel
        if cancel is not None:
            self._loop.call_soon_threadsafe(cancel.set)

    def _new_cancel(self) -> asyncio.Event:
        async def make() -> asyncio.Event:
            return asyncio.Event()

        self._cancel = self._run(make())
        return self._cancel

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coroutine.close()
            raise RuntimeError("this SyncAgent is closed; build a new one")
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("SyncAgent called from inside its own event loop; await Agent")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncAgent:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
