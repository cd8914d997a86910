"""Benchmark of the REST API against a real ``mneme api`` on 127.0.0.1; prints Markdown tables.

Run ``python -m benchmarks.api`` (``--quick`` for a small document and short load phases).

1. **Ingest**: a long document (Moby-Dick, topped up with Frankenstein to ``--tokens`` tokens of
   the configured tokenizer) uploaded as JSON and followed over server-sent events until its job
   is done, against the same text ingested through the Python SDK (``Reading.memory().ingest``)
   in this process, into a fresh home of its own. Both use the real default embedder and the
   same segmenter (``--segmenter``, default ``fixed``: the surprise segmenter would time the
   LLM, not the API), and both are warmed up first (model loaded, one small document).
2. **Search load**: 1, 8 and 32 concurrent clients (httpx, one connection each) each sending
   ``POST /v1/documents/{id}/search`` back to back for ``--seconds``; requests per second and
   p50/p99 latency, and the share of answers that were not 200 (must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.reading import Reading
from app.settings import load_settings
from memory import Database
from memory.keys import SqlKeyStore

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval-data" / "gutenberg-novels"
BOOKS = ("2701-0.txt", "84-0.txt", "1342-0.txt")  # Moby-Dick, Frankenstein, Pride and Prejudice
MNEME = [sys.executable, "-c", "from app.cli import main; main()"]
QUERIES = [
    "Why does Ahab hunt the white whale?",
    "What happens to the Pequod at the end?",
    "Who is Queequeg and where does Ishmael meet him?",
    "How are whales rendered into oil on the ship?",
    "What does the doubloon nailed to the mast mean?",
    "Describe the creature's first days of life.",
    "Where does Victor Frankenstein study science?",
    "What did the sailors see in the fog?",
]
CONCURRENCY = (1, 8, 32)


def document(tokens: int, count: Callable[[str], int]) -> str:
    """Text of at least ``tokens`` tokens (by ``count``), whole books then a cut of the next."""
    parts: list[str] = []
    total = 0
    for name in BOOKS:
        text = (EVAL / name).read_text(encoding="utf-8")
        size = count(text)
        if total + size >= tokens:
            share = int(len(text) * (tokens - total) / size) + 1
            parts.append(text[:share])
            break
        parts.append(text)
        total += size
    return "\n\n".join(parts)


def environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    return env | {"MNEME_HOME": str(home)}


@contextmanager
def api_server(home: Path, port: int) -> Iterator[str]:
    log = home / "api.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*MNEME, "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environment(home),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log, 180)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, limit_s: float) -> None:
    """Until ``url`` answers ``/ready``; the server's log if it exits first."""
    deadline = time.monotonic() + limit_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mneme api exited:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"mneme api did not become ready within {limit_s:g} s")
        time.sleep(0.2)


def ingest_via_api(
    url: str, headers: dict[str, str], text: str, segmenter: str
) -> tuple[float, int, dict[str, Any]]:
    """Seconds from the upload to the ``done`` event; the document id; the job's result."""
    began = time.perf_counter()
    body = {"name": "bench", "text": text, "segmenter": segmenter}
    answer = httpx.post(f"{url}/v1/documents", json=body, headers=headers, timeout=600)
    answer.raise_for_status()
    job_id, document_id = answer.json()["job_id"], answer.json()["document_id"]
    event, data = "", {}  # type: tuple[str, dict[str, Any]]
    with httpx.stream("GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=None) as s:
        for line in s.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: ") and event in ("done", "failed"):
                data = json.loads(line.removeprefix("data: "))
    if event != "done":
        raise RuntimeError(f"the ingest job ended {event}: {data.get('error')}")
    return time.perf_counter() - began, document_id, data["result"]


def ingest_via_sdk(reading: Reading, text: str, segmenter: str, run: int) -> float:
    """Seconds of ``EpisodicMemory.ingest`` into a fresh namespace of ``reading``'s home."""
    memory = reading.memory(f"sdk-{run}", segmenter)  # type: ignore[arg-type]
    began = time.perf_counter()
    asyncio.run(memory.ingest(text, name="bench"))
    return time.perf_counter() - began


async def load(
    url: str, headers: dict[str, str], document_id: int, clients: int, seconds: float
) -> tuple[float, float, float, float]:
    """(requests/s, p50 ms, p99 ms, share not 200) with ``clients`` concurrent clients."""
    path = f"{url}/v1/documents/{document_id}/search"
    latencies: list[float] = []
    failures = 0
    stop = time.perf_counter() + seconds

    async def client(number: int) -> None:
        nonlocal failures
        async with httpx.AsyncClient(headers=headers, timeout=120) as http:
            i = number
            while time.perf_counter() < stop:
                body = {"query": QUERIES[i % len(QUERIES)], "budget_tokens": 512}
                began = time.perf_counter()
                answer = await http.post(path, json=body)
                latencies.append(time.perf_counter() - began)
                failures += answer.status_code != 200
                i += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    elapsed = time.perf_counter() - began
    ms = np.array(latencies) * 1000
    return (
        len(latencies) / elapsed,
        float(np.percentile(ms, 50)),
        float(np.percentile(ms, 99)),
        failures / max(1, len(latencies)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="30k tokens, 4 s per load phase")
    parser.add_argument("--tokens", type=int, default=300_000, help="size of the document")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of a load phase")
    parser.add_argument("--segmenter", default="fixed", choices=["fixed", "embedding"])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--repeats", type=int, default=2, help="ingests each way, interleaved; the best counts"
    )
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.seconds = 30_000, 4.0
    root = Path(tempfile.mkdtemp(prefix="mneme-bench-api-"))
    try:
        api_home, sdk_home = root / "api", root / "sdk"
        reading = Reading(load_settings(home=api_home))
        text = document(args.tokens, reading.count_tokens)
        tokens = reading.count_tokens(text)
        api_home.mkdir(parents=True)
        database = Database(reading.settings.resolved_database_url)
        database.upgrade()
        _, key = SqlKeyStore(database).create("bench")
        database.close()
        headers = {"Authorization": f"Bearer {key}"}
        sdk = Reading(load_settings(home=sdk_home))
        api_runs: list[float] = []
        sdk_runs: list[float] = []
        try:
            warm = sdk.memory("warm-up", args.segmenter)
            asyncio.run(warm.ingest(text[:4000], name="warm-up"))
            with api_server(api_home, args.port) as url:
                ingest_via_api(url, headers, text[:4000], args.segmenter)  # warm-up
                for run in range(args.repeats):  # interleaved, so drift hits both alike
                    seconds, document_id, result = ingest_via_api(
                        url, headers, text, args.segmenter
                    )
                    api_runs.append(seconds)
                    sdk_runs.append(ingest_via_sdk(sdk, text, args.segmenter, run))
                rows = [
                    asyncio.run(load(url, headers, document_id, clients, args.seconds))
                    for clients in CONCURRENCY
                ]
        finally:
            sdk.close()
        api_s, sdk_s = min(api_runs), min(sdk_runs)
        print(
            f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
            f"document: {tokens:,} tokens, {len(text):,} chars, {result['episodes']:,} "
            f"episodes ({args.segmenter} segmenter, all-MiniLM-L6-v2 embedder)\n"
        )
        print("| ingest | seconds | tokens/s |\n| --- | ---: | ---: |")
        print(f"| REST API (upload → SSE done) | {api_s:.1f} | {tokens / api_s:,.0f} |")
        print(f"| Python SDK (`EpisodicMemory.ingest`) | {sdk_s:.1f} | {tokens / sdk_s:,.0f} |")
        print(f"| API overhead | {100 * (api_s - sdk_s) / sdk_s:+.1f} % | |")
        runs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(api_runs, sdk_runs, strict=True))
        print(f"\nBest of {args.repeats} each (API/SDK seconds per run: {runs}).\n")
        print("| search clients | requests/s | p50 ms | p99 ms | non-200 |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for clients, (rate, p50, p99, failed) in zip(CONCURRENCY, rows, strict=True):
            print(f"| {clients} | {rate:.1f} | {p50:.1f} | {p99:.1f} | {failed:.1%} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
