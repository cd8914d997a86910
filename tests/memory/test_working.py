"""SqlWorkingMemory: subgoals in SQL, summaries written once, the prompt view within a budget."""

from __future__ import annotations

import pytest

from memory import Database, InvalidRecord, MemoryStore, NotFound
from memory.trajectory import SubgoalStatus, TrajectoryStatus
from memory.window import render
from memory.working import SqlTrajectoryStore, SqlWorkingMemory


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
def memory(store: MemoryStore) -> SqlWorkingMemory:
    store.namespace("agent")
    return SqlTrajectoryStore(store.database).start("agent", "stack A on B")


def fill(memory: SqlWorkingMemory, subgoals: int, steps: int) -> None:
    for s in range(subgoals):
        memory.open(f"subgoal {s}")
        for k in range(steps):
            memory.record(f"act {s}.{k}", f"saw {s}.{k} " + "detail " * 5)
        memory.close(SubgoalStatus.DONE, f"result {s}", f"summary of subgoal {s}")


def test_trajectory_round_trips_through_sql(memory: SqlWorkingMemory) -> None:
    fill(memory, 2, 3)
    memory.open("subgoal 2")
    memory.record("look", "a table")
    memory.expand([memory.trajectory.subgoals[0].id])
    memory.turn(9)
    resumed = SqlTrajectoryStore(memory.database).resume(memory.trajectory.id)
    assert resumed.trajectory == memory.trajectory
    assert resumed.trajectory.turns == 9
    assert [s.status for s in resumed.trajectory.subgoals] == [
        SubgoalStatus.DONE,
        SubgoalStatus.DONE,
        SubgoalStatus.OPEN,
    ]
    assert resumed.trajectory.open_subgoal is not None
    assert resumed.trajectory.open_subgoal.steps[0].observation == "a table"
    assert resumed.trajectory.step_count == 7


def test_state_errors_name_the_fix(memory: SqlWorkingMemory) -> None:
    with pytest.raises(InvalidRecord, match="open one with open"):
        memory.record("act", "obs")
    with pytest.raises(InvalidRecord, match="no subgoal is open to close"):
        memory.close(SubgoalStatus.DONE, "r", "s")
    memory.open("first")
    with pytest.raises(InvalidRecord, match="still open; close it first"):
        memory.open("second")
    with pytest.raises(InvalidRecord, match="summary"):
        memory.close(SubgoalStatus.DONE, "r", "  ")
    with pytest.raises(NotFound, match=r"\[999\]"):
        memory.expand([999])
    with pytest.raises(InvalidRecord, match="task"):
        SqlTrajectoryStore(memory.database).start("agent", "")
    with pytest.raises(NotFound, match="namespace 'nobody'"):
        SqlTrajectoryStore(memory.database).start("nobody", "task")
    with pytest.raises(NotFound, match="trajectory 12345"):
        SqlTrajectoryStore(memory.database).resume(12345)
    # Nothing half-written: the failures above left one open subgoal with no steps.
    resumed = SqlTrajectoryStore(memory.database).resume(memory.trajectory.id)
    assert [s.goal for s in resumed.trajectory.subgoals] == ["first"]


def test_summary_is_stored_once_and_shown_instead_of_steps(memory: SqlWorkingMemory) -> None:
    fill(memory, 3, 4)
    memory.open("current work")
    memory.record("pick up A", "holding A")
    view = memory.render(10_000, words)
    assert "summary of subgoal 1" in view.text
    assert "act 1.2" not in view.text  # finished subgoals are one line each
    assert "pick up A" in view.text and "holding A" in view.text
    assert f"Current subgoal #{memory.trajectory.subgoals[-1].id}: current work" in view.text
    assert not view.truncated and view.subgoals_shown == 3


def test_expand_shows_a_finished_subgoal_in_full_until_the_next_opens(
    memory: SqlWorkingMemory,
) -> None:
    fill(memory, 3, 2)
    first = memory.trajectory.subgoals[0]
    memory.expand([first.id])
    assert "act 0.1" in memory.render(10_000, words).text
    memory.open("next")
    assert memory.trajectory.expanded == ()
    assert "act 0.1" not in memory.render(10_000, words).text


def test_tight_budget_keeps_the_newest(memory: SqlWorkingMemory) -> None:
    fill(memory, 12, 3)
    memory.open("current")
    for k in range(30):
        memory.record(f"move {k}", f"state {k} " + "x " * 10)
    full = memory.render(100_000, words)
    for budget in (120, 200, 400, 600):
        view = memory.render(budget, words)
        assert view.tokens <= budget, (budget, view.tokens)
        assert view.text.startswith("Task: stack A on B")
        assert "Current subgoal" in view.text and "move 29" in view.text  # the newest step
        assert view.tokens < full.tokens and view.truncated
        shown = [k for k in range(30) if f"move {k}\n" in view.text + "\n"]
        assert shown == list(range(30 - len(shown), 30))  # a suffix: newest kept, oldest cut
    assert "summary of subgoal 11" in memory.render(600, words).text
    assert "summary of subgoal 0" not in memory.render(600, words).text


def test_budget_smaller_than_the_newest_step_cuts_it(memory: SqlWorkingMemory) -> None:
    memory.open("read the log")
    memory.record("read", "line " * 500)
    view = memory.render(80, words)
    assert view.cut_steps == 1 and "…[cut]" in view.text and view.tokens <= 80
    tiny = memory.render(3, words)  # less than the task line itself
    assert tiny.over_budget and "Current subgoal" in tiny.text


def test_render_rejects_a_budget_below_one(memory: SqlWorkingMemory) -> None:
    with pytest.raises(ValueError, match="budget_tokens=0"):
        render(memory.trajectory, 0, words)


def test_update_and_list(memory: SqlWorkingMemory, database: Database) -> None:
    memory.update(status=TrajectoryStatus.DONE, answer="done", metadata={"a": 1})
    memory.update(metadata={"b": 2})
    other = SqlTrajectoryStore(database).start("agent", "second task")
    done = SqlTrajectoryStore(database).trajectories("agent", status=TrajectoryStatus.DONE)
    assert [t.id for t in done] == [memory.trajectory.id]
    assert done[0].metadata == {"a": 1, "b": 2} and done[0].answer == "done"
    assert [t.id for t in SqlTrajectoryStore(database).trajectories("agent")] == [
        memory.trajectory.id,
        other.trajectory.id,
    ]
    assert not TrajectoryStatus.DONE.resumable and TrajectoryStatus.CANCELLED.resumable
