"""The REST API under load, as a real ``mneme api`` on 127.0.0.1 with default settings.

Run ``python -m benchmarks.load`` (``--quick``: 4 clients for 20 s). A fresh ``MNEME_HOME``, the
bundled model, two tenants. After a warm-up (model loaded, one ask answered) ``--clients``
clients loop for ``--seconds``, each request chosen in turn from a fixed mix: search, ask,
ask streamed, a small ingest, a story step. Every request carries a client timeout a little past
the server's deadline (``MNEME_API_REQUEST_TIMEOUT_S``), so a request with no answer in time is
counted as a *silent timeout* — the goal is none. Then:

- requests by route and status, p50/p99 per route; asks answered / refused (429) / over their
  deadline (504) / silent;
- server memory (RSS of the process) before the load (model loaded, idle), at its peak, and after
  the load once its jobs have ended: quiet for 6 s, then idle as long as before the load (the
  engine drops the prompt prefixes it keeps for speed after ``prefix_idle_s``);
- decompression bombs (a DOCX and an EPUB that unpack to 300 MB) uploaded after the load: the
  answer, seconds, and the server's extra memory;
- seconds from SIGTERM to exit, with model work still running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import zipfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from app.settings import load_settings
from benchmarks.api import EVAL, MNEME, QUERIES, environment, wait_ready
from memory import Database
from memory.keys import SqlKeyStore
from serving.engine.config import EngineConfig

MIX = ("search", "search", "ask", "search", "ask-stream", "ingest", "search", "step")
"""Each client's requests, in turn (starting at its own offset): half of them searches."""
QUESTIONS = ["Why does Ahab hunt the white whale?", "Who is Queequeg?", "What is the Pequod?"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Sampler:
    """The RSS of a process, sampled every ``every_s`` in a thread: now, and the peak since
    :meth:`reset`."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def now(self) -> int:
        try:
            return int(self.process.memory_info().rss)
        except psutil.Error:
            return 0

    def reset(self) -> int:
        self.peak = self.now()
        return self.peak

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.peak = max(self.peak, self.now())

    def close(self) -> None:
        self._stop.set()


def bomb(suffix: str, size: int = 300 * 1024 * 1024) -> bytes:
    """A DOCX or EPUB whose one text part unpacks to ``size`` bytes of paragraphs."""
    if suffix == ".docx":
        member, head, paragraph = "word/document.xml", b"<w:document><w:body>", b"<w:p><w:r><w:t>"
        paragraph += b"a" * 1000 + b"</w:t></w:r></w:p>"
        extra = {"[Content_Types].xml": b"<Types/>", "_rels/.rels": b"<Relationships/>"}
    else:
        member, head, paragraph = "EPUB/one.xhtml", b"<html><body>", b"<p>" + b"a" * 1000 + b"</p>"
        extra = {"mimetype": b"application/epub+zip", "META-INF/container.xml": b"<container/>"}
    block = paragraph * (1024 * 1024 // len(paragraph))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in extra.items():
            archive.writestr(name, data)
        with archive.open(member, "w") as stream:
            stream.write(head)
            for _ in range(size // len(block)):
                stream.write(block)
    return buffer.getvalue()


class Load:
    """The clients' shared tallies."""

    def __init__(self) -> None:
        self.statuses: Counter[tuple[str, str]] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()

    def record(self, route: str, status: str, seconds: float) -> None:
        self.statuses[(route, status)] += 1
        self.latency[route].append(seconds)


async def one(
    http: httpx.AsyncClient, route: str, target: dict[str, Any], n: int
) -> tuple[str, str]:
    """Send one request of ``route``; (status, error type) — status "silent" if none came."""
    document, story = target["document"], target["story"]
    try:
        if route == "search":
            body = {"query": QUERIES[n % len(QUERIES)], "budget_tokens": 512}
            answer = await http.post(f"/v1/documents/{document}/search", json=body)
        elif route in ("ask", "ask-stream"):
            body = {"question": QUESTIONS[n % len(QUESTIONS)], "stream": route == "ask-stream"}
            if route == "ask":
                answer = await http.post(f"/v1/documents/{document}/ask", json=body)
            else:
                async with http.stream(
                    "POST", f"/v1/documents/{document}/ask", json=body
                ) as streamed:
                    events = [line async for line in streamed.aiter_lines()]
                    if streamed.status_code != 200:
                        return str(streamed.status_code), ""
                    if "event: answer" in events:
                        return "200", ""
                    for line in events:
                        if line.startswith("data: ") and '"status"' in line:
                            error = json.loads(line.removeprefix("data: "))
                            return str(error["status"]), str(error["type"])
                    return "200-no-answer", ""
        elif route == "ingest":
            book = (EVAL / "84-0.txt").read_text(encoding="utf-8")
            start = (n * 3000) % (len(book) - 3000)
            text = book[start : start + 3000]
            answer = await http.post("/v1/documents", json={"name": f"n{n}", "text": text})
        elif story is None:
            return "no-story", ""
        else:
            answer = await http.post(f"/v1/stories/{story}/steps", json={})
    except httpx.TimeoutException:
        return "silent", ""
    kind = ""
    if answer.status_code >= 400:
        kind = answer.json().get("error", {}).get("type", "")
    return str(answer.status_code), kind


async def run_load(
    url: str, tenants: list[dict[str, Any]], clients: int, seconds: float, timeout_s: float
) -> Load:
    load = Load()
    stop = time.monotonic() + seconds

    async def client(number: int) -> None:
        tenant = tenants[number % len(tenants)]
        async with httpx.AsyncClient(
            base_url=url, headers=tenant["headers"], timeout=timeout_s
        ) as http:
            for n in itertools.count(number):
                if time.monotonic() >= stop:
                    return
                route = MIX[n % len(MIX)]
                began = time.monotonic()
                status, kind = await one(http, route, tenant, n)
                load.record(route, status, time.monotonic() - began)
                if kind:
                    load.errors[f"{route} {status} {kind}"] += 1
                if status == "429":
                    await asyncio.sleep(1.0)  # a polite client backs off

    await asyncio.gather(*(client(n) for n in range(clients)))
    return load


def settle(url: str, tenants: list[dict[str, Any]], limit_s: float = 300) -> None:
    """Wait until no tenant has a queued or running document job."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        busy = False
        for tenant in tenants:
            listed = httpx.get(f"{url}/v1/documents", headers=tenant["headers"], timeout=30)
            busy |= any(d["status"] in ("queued", "running") for d in listed.json()["documents"])
        if not busy:
            return
        time.sleep(1)


def table(load: Load) -> None:
    statuses = sorted({s for _, s in load.statuses})
    print("| route | " + " | ".join(statuses) + " | p50 s | p99 s |")
    print("| --- | " + " | ".join("---:" for _ in statuses) + " | ---: | ---: |")
    for route in sorted(load.latency):
        cells = [str(load.statuses.get((route, s), 0)) for s in statuses]
        times = np.array(load.latency[route])
        print(f"| {route} | {' | '.join(cells)} | {np.percentile(times, 50):.2f} | "
              f"{np.percentile(times, 99):.2f} |")  # fmt: skip


QUIET_S = 6.0
"""Seconds without requests before a first reading (the API trims its heap after 2 s quiet)."""
IDLE_S = (EngineConfig().prefix_idle_s or 0.0) + 5.0
"""Seconds without requests before the compared readings: the engine has then also dropped the
prompt prefixes it keeps for speed (``prefix_idle_s``), before the load as after it."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true", help="4 clients for 20 s")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = 4, 20.0
    root = Path(tempfile.mkdtemp(prefix="mneme-bench-load-"))
    home, log = root / "home", root / "api.log"
    home.mkdir()
    settings = load_settings(home=home)
    database = Database(settings.resolved_database_url)
    database.upgrade()
    keys = SqlKeyStore(database)
    tenants: list[dict[str, Any]] = [
        {"headers": {"Authorization": f"Bearer {keys.create(t)[1]}"}} for t in "ab"
    ]
    database.close()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*MNEME, "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environment(home),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    sampler = Sampler(process.pid)
    try:
        wait_ready(url, process, log, 300)
        text = (EVAL / "2701-0.txt").read_text(encoding="utf-8")[20_000:32_000]
        began = time.monotonic()
        for tenant in tenants:  # one document and one story each (default settings)
            answer = httpx.post(f"{url}/v1/documents", json={"name": "moby", "text": text},
                                headers=tenant["headers"], timeout=60)  # fmt: skip
            tenant["document"] = answer.json()["document_id"]
        settle(url, tenants)
        for tenant in tenants:
            ask = httpx.post(f"{url}/v1/documents/{tenant['document']}/ask",
                             json={"question": QUESTIONS[0]}, headers=tenant["headers"],
                             timeout=600)  # fmt: skip
            story = httpx.post(f"{url}/v1/stories", json={"genre": "sea adventure",
                               "premise": "A young sailor joins a whaling ship."},
                               headers=tenant["headers"], timeout=600)  # fmt: skip
            tenant["story"] = story.json().get("id") if story.status_code == 201 else None
            print(f"warm-up: ask {ask.status_code}, story {story.status_code}", flush=True)
        setup_s = time.monotonic() - began
        time.sleep(IDLE_S)  # as after the load: the server gives memory back once idle
        before = sampler.reset()
        timeout_s = settings.api_request_timeout_s + 15
        load = asyncio.run(run_load(url, tenants, args.clients, args.seconds, timeout_s))
        peak = sampler.peak
        settle(url, tenants)
        time.sleep(QUIET_S)
        after_quiet = sampler.now()
        time.sleep(IDLE_S - QUIET_S)
        after = sampler.now()

        bombs = []
        for suffix in (".docx", ".epub"):
            data = bomb(suffix)
            sampler.reset()
            base = sampler.now()
            began = time.monotonic()
            answer = httpx.post(f"{url}/v1/documents", files={"file": (f"bomb{suffix}", data)},
                                headers=tenants[0]["headers"], timeout=120)  # fmt: skip
            seconds = time.monotonic() - began
            time.sleep(0.2)
            message = answer.json().get("error", {}).get("message", "")[:90]
            bombs.append((suffix, len(data), answer.status_code, seconds,
                          (sampler.peak - base) / 2**20, message))  # fmt: skip

        # SIGTERM while model work runs: one ask in flight.
        pending = threading.Thread(
            target=lambda: _quiet_post(
                f"{url}/v1/documents/{tenants[0]['document']}/ask",
                {"question": QUESTIONS[1]},
                tenants[0]["headers"],
            ),
            daemon=True,
        )
        pending.start()
        time.sleep(1.0)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
            exit_s = time.monotonic() - began
        except subprocess.TimeoutExpired:
            process.kill()
            exit_s = float("inf")
    finally:
        sampler.close()
        if process.poll() is None:
            process.kill()
            process.wait()

    mb = 2**20
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.clients} clients for {args.seconds:.0f} s, default settings (bundled model); "
          f"set-up {setup_s:.0f} s\n")  # fmt: skip
    table(load)
    asks: Counter[str] = Counter()
    for (route, status), count in load.statuses.items():
        if route.startswith("ask"):
            asks[status] += count
    total = sum(load.statuses.values())
    fives = sum(c for (_, s), c in load.statuses.items() if s.startswith("5"))
    silent = sum(c for (_, s), c in load.statuses.items() if s == "silent")
    print(f"\nAsks: {asks.get('200', 0)} answered, {asks.get('429', 0)} refused (429), "
          f"{asks.get('504', 0)} over their deadline (504), {asks.get('silent', 0)} silent. "
          f"All requests: {total}, 5xx {fives}, silent {silent}.")  # fmt: skip
    if load.errors:
        print("\nErrors by route, status and type: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(load.errors.items())))  # fmt: skip
    print("\n| server memory | MB |\n| --- | ---: |")
    print(f"| before the load (model loaded), idle {IDLE_S:.0f} s | {before / mb:,.0f} |")
    print(f"| peak | {peak / mb:,.0f} |")
    change = 100 * (after_quiet - before) / before
    print(f"| after the load, jobs ended, quiet {QUIET_S:.0f} s | {after_quiet / mb:,.0f} "
          f"({change:+.1f} %) |")  # fmt: skip
    change = 100 * (after - before) / before
    print(f"| after the load, idle {IDLE_S:.0f} s | {after / mb:,.0f} ({change:+.1f} %) |")
    print("\n| bomb | size | status | seconds | extra MB | message |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for suffix, size, code, seconds, extra, message in bombs:
        print(f"| {suffix} → 300 MB | {size / 1024:,.0f} KB | {code} | {seconds:.2f} | "
              f"{extra:.1f} | {message} |")  # fmt: skip
    print(f"\nSIGTERM with an ask running → exit in {exit_s:.1f} s.")
    shutil.rmtree(root, ignore_errors=True)


def _quiet_post(url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, headers=headers, timeout=60)


if __name__ == "__main__":
    main()
