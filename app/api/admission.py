"""Admission control for model work: bounded queues, fair across tenants, with deadlines.

Model work (ask, story steps and openings, summarise and LLM-backed ingest jobs) is slow and
shares one model, so it never starts unbounded. A :class:`Gate` runs at most ``slots`` pieces of
work at once; others wait in a queue of at most ``queue`` entries, at most ``per_tenant`` of them
one tenant's. When a slot frees, the next waiter comes from the next tenant in turn (round-robin
over tenants, first-come within one), so a tenant with many requests cannot starve another.
A request that finds the queue full is refused at once with :class:`~app.errors.Overloaded`
(HTTP 429 with ``Retry-After``) — nothing waits unbounded and nothing is silent.

Entering is synchronous (:meth:`Gate.enter` returns a :class:`Ticket` or raises), so a route can
refuse before it answers 202 for a job; the ticket is then awaited (``async with ticket``) by the
work itself, which holds the slot until it ends. A ticket never used must be released
(:meth:`Ticket.release`), which the ``async with`` does on any exit, cancellation included.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from app.errors import DeadlineExceeded, Overloaded
from serving.server.disconnect import Receive, unless_disconnected

T = TypeVar("T")

_SMOOTHING = 0.2  # weight of the newest service time in the running average


class Gate:
    """At most ``slots`` holders at once, at most ``queue`` waiters (``per_tenant`` each)."""

    def __init__(self, name: str, *, slots: int, queue: int, per_tenant: int) -> None:
        if slots < 1 or queue < 0 or per_tenant < 1:
            raise ValueError("a gate needs slots >= 1, queue >= 0 and per_tenant >= 1")
        self.name = name
        self.slots = slots
        self.queue = queue
        self.per_tenant = per_tenant
        self.running = 0
        self._waiting: dict[str, collections.deque[Ticket]] = {}
        self._turns: collections.deque[str] = collections.deque()  # tenants with waiters
        self._service_s = 10.0  # running average of how long a holder keeps its slot

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def waiting_for(self, tenant: str) -> int:
        return len(self._waiting.get(tenant, ()))

    def enter(self, tenant: str, *, bounded: bool = True) -> Ticket:
        """A place for ``tenant``: a slot now, else the queue; :class:`Overloaded` if full.

        ``bounded=False`` queues past the limits: for work already admitted, and so bounded,
        by another gate (a summarise or surprise-ingest job waiting for a model slot).
        """
        ticket = Ticket(self, tenant)
        if self.running < self.slots and not self._turns:
            self.running += 1
            ticket.granted.set_result(None)
            return ticket
        if bounded:
            self._check_room(tenant)
        if tenant not in self._waiting:
            self._waiting[tenant] = collections.deque()
            self._turns.append(tenant)
        self._waiting[tenant].append(ticket)
        return ticket

    def _check_room(self, tenant: str) -> None:
        """Refuse with :class:`Overloaded` when the queue, or the tenant's share, is full."""
        if self.waiting >= self.queue:
            raise Overloaded(
                f"the server is busy: {self.running} {self.name} requests are running and "
                f"{self.waiting} waiting, the most it queues; retry after "
                f"{self.retry_after_s()} s",
                retry_after_s=self.retry_after_s(),
            )
        if self.waiting_for(tenant) >= self.per_tenant:
            raise Overloaded(
                f"this tenant already has {self.per_tenant} {self.name} requests waiting, the "
                f"most one tenant may queue; wait for them, or retry after "
                f"{self.retry_after_s()} s",
                retry_after_s=self.retry_after_s(),
            )

    def retry_after_s(self) -> int:
        """Seconds until a place is likely free: the queue ahead served ``slots`` at a time."""
        rounds = (self.waiting + 1) / self.slots
        return max(1, math.ceil(rounds * self._service_s))

    def _leave(self, ticket: Ticket, held_s: float | None) -> None:
        if held_s is not None:
            self._service_s += _SMOOTHING * (held_s - self._service_s)
        if ticket.granted.done() and not ticket.granted.cancelled():
            self.running -= 1
            self._grant()
            return
        queue = self._waiting.get(ticket.tenant)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            if not queue:
                del self._waiting[ticket.tenant]
                self._turns.remove(ticket.tenant)
        ticket.granted.cancel()

    def _grant(self) -> None:
        """Give free slots to waiters, one tenant at a time in turn."""
        while self.running < self.slots and self._turns:
            tenant = self._turns.popleft()
            queue = self._waiting[tenant]
            ticket = queue.popleft()
            if queue:
                self._turns.append(tenant)  # back of the line
            else:
                del self._waiting[tenant]
            self.running += 1
            ticket.granted.set_result(None)


class Ticket:
    """One admitted request: ``async with ticket`` waits for its slot and holds it."""

    def __init__(self, gate: Gate, tenant: str) -> None:
        self.gate = gate
        self.tenant = tenant
        self.granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._since: float | None = None
        self._released = False

    async def __aenter__(self) -> Ticket:
        try:
            await asyncio.shield(self.granted)
        except BaseException:
            self.release()
            raise
        self._since = time.monotonic()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give the slot (or the place in the queue) back; idempotent."""
        if self._released:
            return
        self._released = True
        held = None if self._since is None else time.monotonic() - self._since
        self.gate._leave(self, held)


async def admitted(
    ticket: Ticket,
    work: Callable[[], Awaitable[T]],
    *,
    deadline_s: float,
    what: str,
    receive: Receive | None = None,
) -> T:
    """``work()``'s result, run once ``ticket``'s slot comes, all within ``deadline_s``.

    Past the deadline the work is cancelled: still queued, or running while other work shares
    the gate, :class:`Overloaded` (429, retry later); running alone, :class:`DeadlineExceeded`
    (504: the work itself is too slow). With ``receive`` (the request's ASGI receive, its
    body already read) a client that disconnects cancels the work too
    (:class:`~serving.server.disconnect.ClientGone`).
    """
    started = False

    async def run() -> T:
        nonlocal started
        async with ticket:
            started = True
            return await work()

    timer = asyncio.timeout(deadline_s)
    try:
        async with timer:
            if receive is None:
                return await run()
            return await unless_disconnected(run(), receive)
    except TimeoutError as err:
        if not timer.expired():
            raise
        if not started:
            raise Overloaded(
                f"the server was too busy to start this {what} within {deadline_s:g} s; retry "
                f"after {ticket.gate.retry_after_s()} s",
                retry_after_s=ticket.gate.retry_after_s(),
            ) from err
        gate = ticket.gate
        if gate.waiting or gate.running:  # others share it (ours is released): a 429, retry
            raise Overloaded(
                f"the server was too busy to finish this {what} within {deadline_s:g} s; it "
                f"was stopped and nothing was kept; retry after {gate.retry_after_s()} s",
                retry_after_s=gate.retry_after_s(),
            ) from err
        raise DeadlineExceeded(
            f"the {what} did not finish within {deadline_s:g} s (MNEME_API_REQUEST_TIMEOUT_S) "
            "and was stopped; nothing was kept — try again later or with less to do"
        ) from err
    finally:
        ticket.release()
