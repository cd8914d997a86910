"""WorkingMemory: HiAgent's subgoal-chunked working memory of one task, persisted in SQL.

A trajectory holds subgoals in order; at most one is open and takes the action/observation
pairs. Closing a subgoal stores its result and a summary, once; the prompt view
(:func:`memory.window.render`) shows it as that one line from then on, never regenerating it.

The agent sees the :class:`TrajectoryStore` and :class:`WorkingMemory` Protocols;
:class:`SqlTrajectoryStore` and :class:`SqlWorkingMemory` implement them. Every change is its
own SQL transaction, so an agent that stops (crash, cancellation, step limit) resumes from
exactly what was recorded: ``SqlTrajectoryStore(database).resume(trajectory_id)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.database import Database
from memory.errors import InvalidRecord, NotFound
from memory.namespaces import namespace_row
from memory.tables import NamespaceRow, SubgoalRow, SubgoalStepRow, TrajectoryRow, utcnow
from memory.trajectory import Step, Subgoal, SubgoalStatus, Trajectory, TrajectoryStatus
from memory.window import CountTokens, TokenCache, WorkingView, render


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord(f"{what} is {value!r}; give a non-empty string")
    return value


def _to_step(row: SubgoalStepRow) -> Step:
    return Step(
        id=row.id,
        ordinal=row.ordinal,
        action=row.action,
        observation=row.observation,
        created_at=row.created_at,
        metadata=dict(row.meta),
    )


def _to_subgoal(row: SubgoalRow, steps: Sequence[Step]) -> Subgoal:
    return Subgoal(
        id=row.id,
        ordinal=row.ordinal,
        goal=row.goal,
        status=SubgoalStatus(row.status),
        result=row.result,
        summary=row.summary,
        steps=tuple(steps),
        created_at=row.created_at,
        closed_at=row.closed_at,
    )


def _load(session: Session, row: TrajectoryRow, namespace: str) -> Trajectory:
    subgoal_rows = list(
        session.scalars(
            select(SubgoalRow)
            .where(SubgoalRow.trajectory_id == row.id)
            .order_by(SubgoalRow.ordinal)
        )
    )
    steps: dict[int, list[Step]] = {s.id: [] for s in subgoal_rows}
    if subgoal_rows:
        for step in session.scalars(
            select(SubgoalStepRow)
            .where(SubgoalStepRow.subgoal_id.in_(list(steps)))
            .order_by(SubgoalStepRow.subgoal_id, SubgoalStepRow.ordinal)
        ):
            steps[step.subgoal_id].append(_to_step(step))
    return Trajectory(
        id=row.id,
        namespace=namespace,
        task=row.task,
        status=TrajectoryStatus(row.status),
        answer=row.answer,
        turns=row.turns,
        expanded=tuple(row.expanded),
        subgoals=tuple(_to_subgoal(s, steps[s.id]) for s in subgoal_rows),
        created_at=row.created_at,
        updated_at=row.updated_at,
        metadata=dict(row.meta),
    )


class WorkingMemory(Protocol):
    """The working memory of one trajectory: the trajectory as a value, changed only through
    these methods. A change the state does not allow (acting with no open subgoal, opening a
    second one) raises :class:`InvalidRecord` naming what to do instead."""

    @property
    def trajectory(self) -> Trajectory: ...

    def open(self, goal: str) -> Subgoal:
        """Open a new subgoal; the previous one must be closed first."""
        ...

    def record(
        self, action: str, observation: str, *, metadata: Mapping[str, Any] | None = None
    ) -> Step:
        """Add an action and its observation to the open subgoal."""
        ...

    def close(self, status: SubgoalStatus, result: str, summary: str) -> Subgoal:
        """Close the open subgoal as done or failed, storing its result and summary (once)."""
        ...

    def expand(self, subgoal_ids: Sequence[int]) -> tuple[int, ...]:
        """Show these finished subgoals in full until the next subgoal opens; returns them all
        (:class:`NotFound` for ids that are not subgoals of this trajectory)."""
        ...

    def turn(self, count: int = 1) -> int:
        """Count model turns taken; the new total."""
        ...

    def update(
        self,
        *,
        status: TrajectoryStatus | None = None,
        answer: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Trajectory:
        """Set the trajectory's status, answer or metadata (metadata is merged, not replaced)."""
        ...

    def render(self, budget_tokens: int, count_tokens: CountTokens) -> WorkingView:
        """The prompt view within ``budget_tokens`` counted by ``count_tokens``."""
        ...


class TrajectoryStore(Protocol):
    """Where an agent's trajectories live: a new one per task, a stopped one resumed."""

    def start(
        self, namespace: str, task: str, *, metadata: Mapping[str, Any] | None = None
    ) -> WorkingMemory:
        """A new, running trajectory for ``task`` in the existing ``namespace`` (:class:`NotFound`
        if it does not exist, :class:`InvalidRecord` for an empty task)."""
        ...

    def resume(self, trajectory_id: int) -> WorkingMemory:
        """The working memory of a stored trajectory, exactly as it was last recorded
        (:class:`NotFound` if there is none)."""
        ...


class SqlTrajectoryStore:
    """:class:`TrajectoryStore` in SQL (tables ``trajectories``, ``subgoals``,
    ``subgoal_steps``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def start(
        self, namespace: str, task: str, *, metadata: Mapping[str, Any] | None = None
    ) -> SqlWorkingMemory:
        """A new, running trajectory for ``task`` in the existing ``namespace``."""
        _text(task, "the task")
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            row = TrajectoryRow(
                namespace_id=space.id,
                task=task,
                status=TrajectoryStatus.RUNNING.value,
                turns=0,
                expanded=[],
                meta=dict(metadata or {}),
            )
            session.add(row)
            session.flush()
            return SqlWorkingMemory(self.database, _load(session, row, space.name))

    def resume(self, trajectory_id: int) -> SqlWorkingMemory:
        """The working memory of a stored trajectory, exactly as it was last recorded."""
        with self.database.session() as session:
            row = session.get(TrajectoryRow, trajectory_id)
            if row is None:
                raise NotFound(f"trajectory {trajectory_id} does not exist")
            space = session.get(NamespaceRow, row.namespace_id)
            assert space is not None  # a foreign key with ON DELETE CASCADE
            return SqlWorkingMemory(self.database, _load(session, row, space.name))

    def trajectories(
        self, namespace: str, *, status: TrajectoryStatus | None = None
    ) -> list[Trajectory]:
        """The namespace's trajectories, oldest first (optionally only those in ``status``)."""
        with self.database.session() as session:
            space = namespace_row(session, namespace)
            query = select(TrajectoryRow).where(TrajectoryRow.namespace_id == space.id)
            if status is not None:
                query = query.where(TrajectoryRow.status == status.value)
            rows = session.scalars(query.order_by(TrajectoryRow.id))
            return [_load(session, row, space.name) for row in rows]


class SqlWorkingMemory:
    """:class:`WorkingMemory` in SQL. Build it with :class:`SqlTrajectoryStore`.

    Holds the trajectory as a value (:attr:`trajectory`) and writes every change to SQL first.
    One writer per trajectory: two ``SqlWorkingMemory`` objects on the same trajectory would each
    keep their own view. Raises :class:`InvalidRecord` for an operation the state does not allow
    (acting with no open subgoal, opening a second one), naming what to do instead.
    """

    def __init__(self, database: Database, trajectory: Trajectory) -> None:
        self.database = database
        self._trajectory = trajectory
        self._cache: TokenCache | None = None

    @property
    def trajectory(self) -> Trajectory:
        return self._trajectory

    # -- changes ----------------------------------------------------------------------------

    def _trajectory_row(self, session: Session) -> TrajectoryRow:
        row = session.get(TrajectoryRow, self._trajectory.id)
        if row is None:
            raise NotFound(f"trajectory {self._trajectory.id} was deleted")
        return row

    def _touch(
        self,
        session: Session,
        *,
        status: TrajectoryStatus | None = None,
        answer: str | None = None,
        turns: int | None = None,
        expanded: Sequence[int] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Trajectory:
        """Write the given trajectory fields (and ``updated_at``); the value they make, for the
        caller to keep once the transaction has committed."""
        row = self._trajectory_row(session)
        value = self._trajectory
        if status is not None:
            row.status = status.value
            value = replace(value, status=status)
        if answer is not None:
            row.answer = answer
            value = replace(value, answer=answer)
        if turns is not None:
            row.turns = turns
            value = replace(value, turns=turns)
        if expanded is not None:
            row.expanded = list(expanded)
            value = replace(value, expanded=tuple(expanded))
        if metadata is not None:
            row.meta = dict(metadata)
            value = replace(value, metadata=dict(metadata))
        row.updated_at = utcnow()
        return replace(value, updated_at=row.updated_at)

    def open(self, goal: str) -> Subgoal:
        """Open a new subgoal; the previous one must be closed first."""
        _text(goal, "the subgoal's goal")
        current = self._trajectory.open_subgoal
        if current is not None:
            raise InvalidRecord(
                f"subgoal #{current.id} ({current.goal!r}) is still open; close it first"
            )
        with self.database.session() as session:
            row = SubgoalRow(
                trajectory_id=self._trajectory.id,
                ordinal=len(self._trajectory.subgoals) + 1,
                goal=goal,
                status=SubgoalStatus.OPEN.value,
            )
            session.add(row)
            session.flush()
            subgoal = _to_subgoal(row, ())
            value = self._touch(session, expanded=[])  # expansions served the subgoal before
        self._trajectory = replace(value, subgoals=(*value.subgoals, subgoal))
        return subgoal

    def _require_open(self, what: str) -> Subgoal:
        current = self._trajectory.open_subgoal
        if current is None:
            raise InvalidRecord(f"no subgoal is open to {what}; open one with open(goal) first")
        return current

    def _replace_open(self, subgoal: Subgoal) -> None:
        self._trajectory = replace(
            self._trajectory, subgoals=(*self._trajectory.subgoals[:-1], subgoal)
        )

    def record(
        self, action: str, observation: str, *, metadata: Mapping[str, Any] | None = None
    ) -> Step:
        """Add an action and its observation to the open subgoal."""
        current = self._require_open("record a step in")
        _text(action, "the action")
        if not isinstance(observation, str):
            raise InvalidRecord(f"the observation is {observation!r}; give a string")
        with self.database.session() as session:
            row = SubgoalStepRow(
                subgoal_id=current.id,
                ordinal=len(current.steps) + 1,
                action=action,
                observation=observation,
                meta=dict(metadata or {}),
            )
            session.add(row)
            session.flush()
            step = _to_step(row)
        self._replace_open(replace(current, steps=(*current.steps, step)))
        return step

    def close(self, status: SubgoalStatus, result: str, summary: str) -> Subgoal:
        """Close the open subgoal as done or failed, storing its result and summary (once)."""
        current = self._require_open("close")
        if status is SubgoalStatus.OPEN:
            raise InvalidRecord("a subgoal closes as done or failed, not open")
        _text(summary, "the subgoal's summary")
        with self.database.session() as session:
            row = session.get(SubgoalRow, current.id)
            if row is None:
                raise NotFound(f"subgoal {current.id} was deleted")
            row.status, row.result, row.summary = status.value, result, summary
            row.closed_at = utcnow()
            closed = replace(
                current, status=status, result=result, summary=summary, closed_at=row.closed_at
            )
            value = self._touch(session)
        self._trajectory = value
        self._replace_open(closed)
        return closed

    def expand(self, subgoal_ids: Sequence[int]) -> tuple[int, ...]:
        """Show these finished subgoals in full until the next subgoal opens; returns them all.

        Raises :class:`NotFound` naming the ids that are not subgoals of this trajectory.
        """
        known = {s.id for s in self._trajectory.subgoals}
        if missing := sorted(set(subgoal_ids) - known):
            valid = ", ".join(f"#{i}" for i in sorted(known)) or "none yet"
            raise NotFound(f"subgoals {missing} are not in this trajectory (its subgoals: {valid})")
        current = self._trajectory.open_subgoal
        wanted = [i for i in subgoal_ids if current is None or i != current.id]
        expanded = list(dict.fromkeys([*self._trajectory.expanded, *wanted]))
        with self.database.session() as session:
            value = self._touch(session, expanded=expanded)
        self._trajectory = value
        return tuple(expanded)

    def turn(self, count: int = 1) -> int:
        """Count model turns taken (for step limits that survive a restart); the new total."""
        with self.database.session() as session:
            value = self._touch(session, turns=self._trajectory.turns + count)
        self._trajectory = value
        return value.turns

    def update(
        self,
        *,
        status: TrajectoryStatus | None = None,
        answer: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Trajectory:
        """Set the trajectory's status, answer or metadata (metadata is merged, not replaced)."""
        merged = None if metadata is None else {**self._trajectory.metadata, **metadata}
        with self.database.session() as session:
            value = self._touch(session, status=status, answer=answer, metadata=merged)
        self._trajectory = value
        return value

    # -- reading ----------------------------------------------------------------------------

    def render(self, budget_tokens: int, count_tokens: CountTokens) -> WorkingView:
        """The prompt view within ``budget_tokens`` counted by ``count_tokens``."""
        if self._cache is None or self._cache.count is not count_tokens:
            self._cache = TokenCache(count_tokens)
        return render(self._trajectory, budget_tokens, count_tokens, cache=self._cache)
