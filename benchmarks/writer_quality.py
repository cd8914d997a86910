"""What the writer stores with a real model: failures, leaks, degeneration, repetition, speed.

Run ``python -m benchmarks.writer_quality`` (the bundled SmolLM2-135M-Instruct and, when
``MNEME_TEST_MODEL`` or ``--tiny`` names it, the tiny pretrained TinyStories model). Each premise
below is written from scratch in a fresh ``MNEME_HOME`` through ``app`` (the web app's and the
REST API's path, default settings): the opening, then ``--steps`` steps following the first plan
(novel) or the first option (interactive). Printed per model (Markdown):

- failed steps (:class:`~agents.errors.StepFailed`: nothing was stored), tries discarded, and
  steps that kept the previous notes (the model gave no usable new ones);
- stored texts with instruction or repair language (paragraphs, memories, plans), by the same
  check the writer applies and by a wider list of repair phrases it does not use;
- degenerate stored paragraphs (a repetition loop or a sentence repeated);
- repeated-4-gram rate and distinct-2 of stored paragraphs against **plain continuation**: the
  same model, the same sampling, continuing the stored story's own text (raw completion, no
  memory, no plan) for the same number of tokens — the baseline, in the same run;
- seconds to the first streamed paragraph text, and per step (median, max).

The premises are held out: none of them was used to write the prompts or choose the defaults
(``--premises tuning`` runs the three that were).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agents.errors import StepFailed
from agents.quality import distinct_n, echoes, prose_problem, repeated_ngram_rate
from agents.story_prompt import INSTRUCTION_TEXTS, tail
from agents.writer import Progress, WriterConfig
from app.reading import Reading
from app.settings import load_settings
from app.writing import Writing, writer_config

HELD_OUT = [
    ("science fiction", "A maintenance robot on a generation ship finds a child who was never "
     "on the manifest.", "novel"),
    ("mystery", "A village baker notices that every loaf she sells to the mayor comes back "
     "uneaten.", "novel"),
    ("fantasy", "You are an apprentice cartographer whose maps change overnight to show places "
     "that do not exist yet.", "interactive"),
    ("horror", "You take a night job guarding an empty museum wing that is not on any floor "
     "plan.", "interactive"),
    ("romance", "Two rival florists are forced to share a stall at a winter market.", "novel"),
    ("western", "An old stagecoach driver agrees to carry one last passenger across the "
     "desert, no questions asked.", "novel"),
]  # fmt: skip
TUNING = [
    ("adventure", "A courier crosses the desert with a sealed letter.", "novel"),
    ("mystery", "You wake in a locked lighthouse with no memory of arriving.", "interactive"),
    ("fairy tale", "A fox and a crow open a bakery together.", "novel"),
]
REPAIR_PHRASES = ("max_tokens", "json", "schema", "reply again", "keep it shorter",
                  "requested length", "cut off", "corrected", "code fences", "attempt")  # fmt: skip
"""Repair-request language, searched in stored text (wider than the writer's own check)."""


@dataclass
class Run:
    """What one model wrote over all premises."""

    steps: int = 0
    failed: int = 0
    discarded: int = 0
    kept_notes: int = 0
    leaked: int = 0
    degenerate: int = 0
    paragraphs: list[str] = field(default_factory=list)
    baseline: list[str] = field(default_factory=list)
    first_token_s: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)


def leaked(texts: list[str]) -> list[str]:
    """Each stored text with instruction or repair language, with what was found in it."""
    found = []
    for text in texts:
        echo = echoes(text, INSTRUCTION_TEXTS)
        phrases = [p for p in REPAIR_PHRASES if p in text.lower()]
        if echo is not None or phrases:
            found.append(f"{echo or ', '.join(phrases)!r} in {text!r}")
    return found


async def timed(work: Any, run: Run) -> Any:
    """Run one step (or opening), recording time to first streamed text and in all."""
    began = time.perf_counter()
    first: list[float] = []
    tries: set[int] = set()

    def on_progress(progress: Progress) -> None:
        if progress.phase == "paragraph":
            tries.add(progress.attempt)
            if progress.paragraph and not first:
                first.append(time.perf_counter() - began)

    run.steps += 1
    try:
        result = await work(on_progress)
    except StepFailed as err:
        run.failed += 1
        run.failures.append(str(err))
        return None
    finally:
        run.step_s.append(time.perf_counter() - began)
        run.first_token_s.extend(first[:1])
        run.discarded += max(0, len(tries) - 1)
    return result


async def story(writing: Writing, premise: tuple[str, str, str], steps: int, run: Run) -> None:
    genre, text, mode = premise
    writer = writing.writer
    space = f"bench-{abs(hash(text)) % 10**8}"
    opened = await timed(
        lambda on: writer.start(space, genre=genre, premise=text, mode=mode,  # type: ignore[arg-type]
                                on_progress=on), run)  # fmt: skip
    if opened is None:
        return
    story_, node = opened
    nodes = [node]
    for _ in range(steps):
        plan = node.plans[0] if node.plans else "Continue the story."
        kind = "action" if mode == "interactive" else "plan"
        stepped = await timed(
            lambda on, plan=plan, kind=kind: writer.step(story_.id, on_progress=on,
                                                         **{kind: plan}), run)  # fmt: skip
        if stepped is not None:
            node = stepped
            nodes.append(node)
    await writer.settle()
    config = writing.config
    count = writer.memory_for(story_.namespace).count_tokens
    for i, stored in enumerate(nodes):
        texts = [stored.paragraph, stored.short_term_memory, *stored.plans]
        if found := leaked(texts):
            run.leaked += 1
            run.leaks.extend(found)
        run.kept_notes += stored.memory_reason.startswith("Not updated")
        run.degenerate += prose_problem(stored.paragraph, min_words=0) is not None
        run.paragraphs.append(stored.paragraph)
        if i == 0:
            continue
        # Plain continuation: the same model and sampling continue the story's own text.
        so_far = "\n\n".join(n.paragraph for n in nodes[:i]) + "\n\n"
        room = writing.reading.context_tokens() - 48
        max_tokens = min(config.paragraph_tokens, room // 2)  # as the writer caps its own
        params = config.sampling(max_tokens)
        completion = await writer.llm.complete(tail(so_far, room - max_tokens, count), params)
        run.baseline.append(completion.text.strip())


def _mean(values: Iterable[float]) -> float:
    listed = list(values)
    return statistics.mean(listed) if listed else 0.0


def table(results: dict[str, Run]) -> str:
    rows = [
        "| model | steps | failed | tries discarded | notes kept | leaked | degenerate | "
        "rep-4 stored | "
        "rep-4 plain continuation | distinct-2 stored | distinct-2 plain | first text s "
        "(median / max) | step s (median / max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in results.items():
        rep = _mean(repeated_ngram_rate(p) for p in run.paragraphs)
        base = _mean(repeated_ngram_rate(p) for p in run.baseline)
        first = run.first_token_s or [0.0]
        step = run.step_s or [0.0]
        rows.append(
            f"| {name} | {run.steps} | {run.failed} | {run.discarded} | {run.kept_notes} | "
            f"{run.leaked} | "
            f"{run.degenerate} | {rep:.3f} | {base:.3f} | {distinct_n(run.paragraphs):.3f} | "
            f"{distinct_n(run.baseline):.3f} | {statistics.median(first):.1f} / {max(first):.1f} "
            f"| {statistics.median(step):.1f} / {max(step):.1f} |"
        )
    return "\n".join(rows)


async def measure(model: str | None, premises: list[tuple[str, str, str]], steps: int,
                  overrides: dict[str, Any]) -> Run:  # fmt: skip
    run = Run()
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home), **({"llm_model": model} if model else {}))
        reading = Reading(settings)
        writing = Writing(reading, replace(writer_config(settings), **overrides))
        try:
            for premise in premises:
                await story(writing, premise, steps, run)
        finally:
            reading.close()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--premises", choices=["held-out", "tuning"], default="held-out")
    parser.add_argument("--limit", type=int, default=0, help="only the first N premises")
    parser.add_argument("--tiny", default=os.environ.get("MNEME_TEST_MODEL", ""),
                        help="folder of the tiny pretrained model ('' skips it)")  # fmt: skip
    parser.add_argument("--skip-default", action="store_true")
    for name in ("temperature", "top_p", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty"):  # fmt: skip
        parser.add_argument(f"--{name.replace('_', '-')}", type=float)
    parser.add_argument("--paragraph-tokens", type=int)
    args = parser.parse_args()
    premises = HELD_OUT if args.premises == "held-out" else TUNING
    premises = premises[: args.limit] if args.limit else premises
    overrides = {
        name: getattr(args, name)
        for name in WriterConfig.__dataclass_fields__
        if getattr(args, name, None) is not None
    }
    models: dict[str, str | None] = {}
    if not args.skip_default:
        models["SmolLM2-135M-Instruct (default)"] = None
    if args.tiny:
        models["tinystories-260k"] = args.tiny
    results = {name: asyncio.run(measure(path, premises, args.steps, overrides))
               for name, path in models.items()}  # fmt: skip
    print(f"## Writer quality: {len(premises)} {args.premises} premises x (opening + "
          f"{args.steps} steps); sampling {writer_config(load_settings()).sampling(1)} "
          f"overrides {overrides}\n")  # fmt: skip
    print(table(results))
    for name, run in results.items():
        for failure in run.failures[:5]:
            print(f"\n- {name}: {failure}")
        for leak in run.leaks:
            print(f"\n- {name}, leaked: {leak}")


if __name__ == "__main__":
    main()
