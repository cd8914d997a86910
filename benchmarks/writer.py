"""Benchmark of RecurrentWriter over a long story; prints Markdown tables.

Run ``python -m benchmarks.writer`` (``--steps 300``; ``--quick`` for 60). A fast fake LLM answers
every step at once with a realistic paragraph (150-220 words, varied by a seeded generator), so
what is timed is Mneme itself: retrieval over the story so far (query embedding, Chroma, SQL),
the prompt's assembly and token counting, ingesting the new paragraph (segmentation, embedding
with the bundled all-MiniLM-L6-v2, SQL + Chroma writes) and the story tree's writes. It reports
prompt tokens per part and Mneme's overhead per step (everything but the LLM call), with the
prompt of step 10 as the baseline for "flat in story length".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.writer import RecurrentWriter, WriterConfig
from memory import ChromaVectorIndex, Database, MemoryStore
from memory.embedder import Embedder
from memory.episodic import EpisodicMemory
from memory.segmentation import SegmenterConfig
from memory.segmenters import FixedSegmenter
from memory.stories import SqlStoryStore
from serving.embeddings import SentenceTransformerEmbedder
from serving.llm import GREEDY, ChatMessage, SamplingParams, StreamDelta
from serving.tokens import TiktokenCounter
from tests.fakes import HashEmbedder, ScriptedLLM

_PROSE = (
    "the caravan moved slowly across dunes while wind carried salt and sand over the old road "
    "Mara counted water skins and watched the horizon for riders from the northern wells her "
    "letter stayed sealed beneath the leather of her coat and the camels complained at dusk"
)
WORDS = _PROSE.split()


class FastReplies:
    """Replies at once with a realistic paragraph; counts the seconds spent making replies."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.seconds = 0.0

    def _paragraph(self) -> str:
        words = self.rng.choice(WORDS, size=int(self.rng.integers(150, 221)))
        sentences = [" ".join(words[i : i + 15]).capitalize() + "." for i in range(0, 150, 15)]
        return " ".join(sentences)

    def __call__(self, user: str, call: int) -> str:
        """The prose call gets a paragraph; the structured calls get their JSON."""
        began = time.perf_counter()
        memory = " ".join(self._paragraph().split()[:60])
        if "Rewrite the notes" in user:
            reply: dict[str, Any] = {
                "short_term_memory": memory,
                "reason": "the caravan moved on",
                "plans": ["Riders appear.", "A well is dry.", "Mara opens the letter."],
                "title": "The Salt Road",
                "outline": "A courier crosses the desert.",
            }
            text = json.dumps(reply)
        else:
            text = self._paragraph()
        self.seconds += time.perf_counter() - began
        return text


class LatentLLM(ScriptedLLM):
    """The scripted LLM, taking ``delay_s`` per reply as a real model would (a real model takes
    seconds for 150-220 words); the event loop stays free meanwhile."""

    def __init__(self, replies: FastReplies, delay_s: float) -> None:
        super().__init__(replies)
        self.delay_s = delay_s

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        await asyncio.sleep(self.delay_s)
        async for delta in super().stream_chat(messages, params):
            yield delta


async def run(
    steps: int, folder: Path, embedder: Embedder, delay_s: float = 0.0
) -> list[dict[str, float]]:
    database = Database(f"sqlite:///{folder / 'writer.db'}")
    database.upgrade()
    store, _ = MemoryStore.open(database, ChromaVectorIndex(path=folder / "chroma"), embedder)
    count = TiktokenCounter("cl100k_base").count
    # As the app's Reading.story_memory: each paragraph one event.
    segmenter = FixedSegmenter(SegmenterConfig(min_tokens=16, max_tokens=512), count)
    replies = FastReplies()
    writer = RecurrentWriter(
        SqlStoryStore(database),
        lambda ns: EpisodicMemory(store, ns, segmenter, count_tokens=count),
        LatentLLM(replies, delay_s),
        WriterConfig(),
    )
    story, _ = await writer.start("bench", genre="adventure", premise="A courier crosses a desert.")
    rows = []
    for step in range(1, steps + 1):
        replies.seconds = 0.0
        began = time.perf_counter()
        node = await writer.step(story.id, plan=f"Day {step}: the caravan goes on.")
        total = time.perf_counter() - began
        parts = {name: float(p["tokens"]) for name, p in node.prompt["parts"].items()}
        overhead = total - replies.seconds - delay_s
        rows.append({"step": step, "overhead_ms": overhead * 1000,
                     "prompt": sum(parts.values()), **parts})  # fmt: skip
    await writer.settle()
    return rows


def table(rows: list[dict[str, float]], marks: Sequence[int]) -> str:
    names = [k for k in rows[0] if k not in {"step", "overhead_ms", "prompt"}]
    head = "| step | prompt tokens | " + " | ".join(names) + " | overhead ms (median of 5) |"
    lines = [head, "|" + "---:|" * (len(names) + 3)]
    for mark in marks:
        row = rows[mark - 1]
        window = [r["overhead_ms"] for r in rows[max(0, mark - 3) : mark + 2]]
        cells = " | ".join(f"{row[n]:.0f}" for n in names)
        lines.append(
            f"| {mark} | {row['prompt']:.0f} | {cells} | {statistics.median(window):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="60 steps")
    parser.add_argument(
        "--embedder",
        choices=["minilm", "hash"],
        default="minilm",
        help="minilm: the real bundled model; hash: a model-free embedder (Mneme's code alone)",
    )
    parser.add_argument(
        "--llm-ms",
        type=float,
        default=0.0,
        help="simulated generation time per paragraph; the new paragraph's ingest overlaps it",
    )
    args = parser.parse_args()
    steps = 60 if args.quick else args.steps
    embedder: Embedder = (
        SentenceTransformerEmbedder() if args.embedder == "minilm" else HashEmbedder(384)
    )
    with tempfile.TemporaryDirectory(prefix="mneme-writer-") as folder:
        began = time.perf_counter()
        rows = asyncio.run(run(steps, Path(folder), embedder, args.llm_ms / 1000))
        seconds = time.perf_counter() - began
    marks = [m for m in (10, 30, 100, 300) if m <= steps]
    print("# RecurrentWriter benchmark\n")
    machine = platform.processor() or platform.machine()
    model = "all-MiniLM-L6-v2 on CPU" if args.embedder == "minilm" else "a model-free embedder"
    print(f"- {steps} steps in {seconds:.0f} s on {machine}; SQLite + Chroma embedded, "
          f"{model}, tokens counted with cl100k_base; each paragraph one event")  # fmt: skip
    latency = f"after {args.llm_ms:g} ms" if args.llm_ms else "at once"
    print(
        f"- scripted LLM answers {latency} (150-220-word paragraphs); overhead = step time minus "
        "the LLM's time (JSON validation counts as overhead); each new paragraph is ingested "
        "in the background, overlapping the next step's generation\n"
    )
    print(table(rows, marks))
    first, last = rows[marks[0] - 1], rows[marks[-1] - 1]
    growth = last["prompt"] / first["prompt"] - 1
    tail = statistics.median(r["overhead_ms"] for r in rows[-5:])
    print(f"\n- prompt at step {marks[-1]} vs step {marks[0]}: {growth:+.1%} (goal within 10%): "
          + ("MET" if abs(growth) <= 0.10 else "NOT MET"))  # fmt: skip
    print(f"- overhead at step {marks[-1]}: {tail:.1f} ms (goal < 50 ms): "
          + ("MET" if tail < 50 else "NOT MET"))  # fmt: skip


if __name__ == "__main__":
    main()
