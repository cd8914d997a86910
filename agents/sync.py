"""``SyncAgent``: the thin blocking wrapper over :class:`agents.hiagent.Agent` for scripts and
Streamlit. Runs each call on one :class:`base.bridge.LoopThread`; no logic of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

from agents.events import Event
from agents.hiagent import Agent, AgentResult
from base.bridge import LoopThread


class SyncAgent:
    """Blocking ``run`` / ``resume`` / ``remember``; :meth:`cancel` (from any thread) stops the
    run in progress at its next turn, leaving the trajectory resumable."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._bridge = LoopThread("SyncAgent")
        self._cancel: asyncio.Event | None = None

    def run(self, task: str, *, on_event: Callable[[Event], None] | None = None) -> AgentResult:
        cancel = self._new_cancel()
        return self._bridge.run(self.agent.run(task, on_event=on_event, cancel=cancel))

    def resume(
        self, trajectory_id: int, *, on_event: Callable[[Event], None] | None = None
    ) -> AgentResult:
        cancel = self._new_cancel()
        return self._bridge.run(self.agent.resume(trajectory_id, on_event=on_event, cancel=cancel))

    def remember(self, trajectory_id: int) -> list[Event]:
        return self._bridge.run(self.agent.remember(trajectory_id))

    def cancel(self) -> None:
        """Ask the run in progress to stop before its next turn (safe from any thread)."""
        cancel = self._cancel
        if cancel is not None:
            self._bridge.call_soon(cancel.set)

    def _new_cancel(self) -> asyncio.Event:
        async def make() -> asyncio.Event:
            return asyncio.Event()

        self._cancel = self._bridge.run(make())
        return self._cancel

    def close(self) -> None:
        """Stop the loop and join its thread; idempotent. A run still in progress (on another
        thread) is cancelled; any call after it raises ``RuntimeError``."""
        self._bridge.close()

    def __enter__(self) -> SyncAgent:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
