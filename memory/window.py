"""The prompt view of HiAgent working memory, within a token budget.

Finished subgoals appear as one line each (id, status, goal, the summary written when they
closed); the open subgoal appears in full; subgoals the agent expanded appear in full too. When
the budget is tight, what is newest survives: the open subgoal's latest steps first, then the
expanded subgoals' latest steps, then the latest summaries. The task line and the open
subgoal's goal are always shown, even past the budget (``over_budget`` says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memory.trajectory import Step, Subgoal, Trajectory

CountTokens = Callable[[str], int]

NOTE_TOKENS = 24
"""Tokens kept back for each "… not shown" note the view may need."""


@dataclass(frozen=True, slots=True)
class WorkingView:
    """What ``render`` produced and what it left out."""

    text: str
    tokens: int  # ``count_tokens(text)``
    budget_tokens: int
    subgoals_shown: int  # finished subgoals shown as summaries
    subgoals_omitted: int  # finished subgoals left out for the budget
    steps_omitted: int  # steps of the open or expanded subgoals left out for the budget
    cut_steps: int  # steps shown with their observation cut short
    over_budget: bool  # even the task line and the open subgoal's goal did not fit

    @property
    def truncated(self) -> bool:
        return bool(self.subgoals_omitted or self.steps_omitted or self.cut_steps)


def step_lines(step: Step) -> str:
    return f"  step {step.ordinal}: {step.action}\n    -> {step.observation}"


def summary_line(subgoal: Subgoal) -> str:
    summary = subgoal.summary or subgoal.result or "(no summary)"
    return f"  #{subgoal.id} [{subgoal.status.value}] {subgoal.goal} => {summary}"


def _cut(text: str, tokens: int, count: CountTokens) -> str:
    """The beginning of ``text`` within ``tokens`` (by halving), marked as cut."""
    low, high = 0, len(text)
    while low < high:  # the longest prefix whose count fits
        middle = (low + high + 1) // 2
        if count(text[:middle] + " …[cut]") <= tokens:
            low = middle
        else:
            high = middle - 1
    return text[:low] + " …[cut]"


class TokenCache:
    """Token counts of pieces already seen (the same lines recur every step)."""

    def __init__(self, count: CountTokens) -> None:
        self.count = count
        self._known: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        known = self._known.get(text)
        if known is None:
            known = self._known[text] = self.count(text) + 1  # + the newline joining it
        return known


def render(
    trajectory: Trajectory,
    budget_tokens: int,
    count_tokens: CountTokens,
    *,
    cache: TokenCache | None = None,
) -> WorkingView:
    """``trajectory`` as prompt text of at most ``budget_tokens`` (see the module docstring)."""
    if budget_tokens < 1:
        raise ValueError(f"budget_tokens={budget_tokens} must be at least 1")
    cost = cache if cache is not None and cache.count is count_tokens else TokenCache(count_tokens)
    current = trajectory.open_subgoal
    finished = [s for s in trajectory.subgoals if not s.is_open]
    expanded = [s for s in finished if s.id in set(trajectory.expanded)]

    task = f"Task: {trajectory.task}"
    head = (
        f"Current subgoal #{current.id}: {current.goal}"
        if current is not None
        else "No open subgoal: call open_subgoal(goal) before acting."
    )
    listing = "Finished subgoals (expand(subgoal_ids) shows their steps):"
    notes = NOTE_TOKENS * (2 + len(expanded))  # the "not shown" lines the view may need
    left = budget_tokens - cost(task) - cost(head) - notes - (cost(listing) if finished else 0)
    over_budget = left < 0

    # Greedy, newest first, stopping at the first piece that does not fit in each group.
    shown_open: list[str] = []
    cut_steps = 0
    open_steps = list(current.steps) if current is not None else []
    for step in reversed(open_steps):
        piece = step_lines(step)
        if cost(piece) <= left:
            shown_open.append(piece)
            left -= cost(piece)
            continue
        if not shown_open and left > 8:  # the newest step must show, even cut short
            piece = _cut(piece, left - 1, count_tokens)
            shown_open.append(piece)
            left -= cost(piece)
            cut_steps = 1
        break
    shown_open.reverse()

    shown_expanded: dict[int, list[str]] = {}
    for subgoal in reversed(expanded):
        header = f"Expanded subgoal #{subgoal.id} [{subgoal.status.value}]: {subgoal.goal}"
        if cost(header) > left:
            break
        left -= cost(header)
        pieces: list[str] = []
        for step in reversed(subgoal.steps):
            piece = step_lines(step)
            if cost(piece) > left:
                break
            pieces.append(piece)
            left -= cost(piece)
        shown_expanded[subgoal.id] = [header, *reversed(pieces)]

    summaries: list[str] = []
    for subgoal in reversed(finished):
        line = summary_line(subgoal)
        if cost(line) > left:
            break
        summaries.append(line)
        left -= cost(line)
    summaries.reverse()

    lines = [task]
    omitted_subgoals = len(finished) - len(summaries)
    if finished:
        lines.append(listing)
        if omitted_subgoals:
            ids = [s.id for s in finished[:omitted_subgoals]]
            lines.append(
                f"  ({omitted_subgoals} earlier subgoals not shown: #{ids[0]} to #{ids[-1]})"
            )
        lines += summaries
    steps_omitted = 0
    for subgoal in expanded:
        if subgoal.id in shown_expanded:
            shown = shown_expanded[subgoal.id]
            hidden = len(subgoal.steps) - (len(shown) - 1)
            lines.append(shown[0])
            if hidden:
                lines.append(f"  ({hidden} earlier steps not shown)")
            lines += shown[1:]
        else:
            hidden = len(subgoal.steps)
        steps_omitted += hidden
    lines.append(head)
    hidden = len(open_steps) - len(shown_open)
    if hidden:
        lines.append(f"  ({hidden} earlier steps not shown)")
    steps_omitted += hidden
    lines += shown_open

    text = "\n".join(lines)
    return WorkingView(
        text=text,
        tokens=count_tokens(text),
        budget_tokens=budget_tokens,
        subgoals_shown=len(summaries),
        subgoals_omitted=omitted_subgoals,
        steps_omitted=steps_omitted,
        cut_steps=cut_steps,
        over_budget=over_budget,
    )
