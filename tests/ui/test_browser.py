"""The web app in a real browser: Debian's chromium driven by Playwright against `mneme ui` on
127.0.0.1, talking to a scripted OpenAI-compatible server (real HTTP) as its LLM.

Screenshots are kept under ``test-artefacts/browser/`` (git ignores them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tests.agents.test_writer import notes
from tests.net import free_port, serving

CHROMIUM = "/usr/bin/chromium"
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "browser"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


PROSE = (
    "the dunes rolled on under a white sky while Mara counted water skins watched riders from "
    "northern wells and kept her sealed letter close"
)
IDRIS = {"kind": "character", "name": "Idris", "text": "A one-eyed caravan master."}


def paragraph(n: int) -> str:
    """A long paragraph (about 8 s of streaming) that never repeats itself."""
    words = PROSE.split(" ")
    return f"Step {n}: " + " ".join(f"{w}{i // len(words) or ''}" for i, w in
                                    enumerate(words * 8)) + "."  # fmt: skip


def scripted_server() -> FastAPI:
    """An OpenAI-compatible chat endpoint: canned JSON chosen by the schema (title and outline,
    notes with a bible suggestion), otherwise a long paragraph of prose."""
    app = FastAPI()
    calls = {"n": 0}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "scripted", "object": "model"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
        body = await request.json()
        schema = body.get("structured_outputs", {}).get("json", {})
        calls["n"] += 1
        title = schema.get("title", "")
        replies = {"OpeningNotes": notes(opening=True), "StepNotes": notes(bible=[IDRIS])}
        text = replies.get(title) or paragraph(calls["n"])
        if body.get("stream"):  # 8 characters every 50 ms: long enough to watch, and to stop
            return StreamingResponse(_chunks(text), media_type="text/event-stream")
        return {
            "id": f"chat-{calls['n']}",
            "object": "chat.completion",
            "created": 0,
            "model": "scripted",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    return app


async def _chunks(text: str) -> AsyncIterator[str]:
    for start in range(0, len(text), 8):
        await asyncio.sleep(0.05)
        delta = {"index": 0, "delta": {"content": text[start : start + 8]}, "finish_reason": None}
        yield f"data: {json.dumps(_chunk(delta))}\n\n"
    yield f"data: {json.dumps(_chunk({'index': 0, 'delta': {}, 'finish_reason': 'stop'}))}\n\n"
    yield "data: [DONE]\n\n"


def _chunk(choice: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chunk", "object": "chat.completion.chunk", "created": 0,
            "model": "scripted", "choices": [choice]}  # fmt: skip


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[str]:
    with serving(scripted_server()) as llm:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
        env.update(MNEME_HOME=str(tmp_path / "home"), MNEME_LLM_BASE_URL=f"{llm}/v1",
                   MNEME_LLM_MODEL="scripted")  # fmt: skip
        command = [
            sys.executable,
            "-c",
            "from app.cli import main; main()",
            "ui",
            "--port",
            str(port),
        ]
        log = (tmp_path / "ui.log").open("wb")  # read it when the test fails
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                raise RuntimeError("mneme ui did not start")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)
            log.close()


def _idle(page: Any) -> None:
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=60_000)


def test_write_a_story_in_a_browser(ui: str) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    shutil.rmtree(ARTEFACTS, ignore_errors=True)
    ARTEFACTS.mkdir(parents=True)
    shots = iter(range(1, 100))

    def shot(page: Any, name: str) -> None:
        page.screenshot(path=str(ARTEFACTS / f"{next(shots)}-{name}.png"), full_page=True)

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{ui}/write", timeout=90_000)
        page.get_by_label("Genre").first.fill("adventure", timeout=90_000)
        # Writers see Streamlit's menu but no Deploy button (client.toolbarMode = "viewer").
        page.get_by_test_id("stMainMenu").wait_for(timeout=60_000)
        assert page.get_by_test_id("stAppDeployButton").count() == 0
        page.get_by_label("Premise").fill("A courier crosses the desert with a sealed letter.")
        page.get_by_role("button", name="Start").click()
        # The opening streams, with Stop, before the story exists.
        page.get_by_text("Starting a story").wait_for(timeout=90_000)
        page.get_by_text("the dunes rolled").first.wait_for(timeout=90_000)
        assert page.get_by_role("button", name="Stop writing").count() == 1
        shot(page, "opening-streaming")
        page.get_by_role("heading", name="The Salt Road").wait_for(timeout=90_000)
        shot(page, "opening")

        # Stop mid-paragraph: nothing is stored.
        _idle(page)
        page.get_by_role("button", name="Write this").first.click()
        page.get_by_text("the dunes rolled").nth(1).wait_for(timeout=90_000)  # streaming
        shot(page, "streaming")
        page.get_by_role("button", name="Stop writing").click()
        page.get_by_text("Stopped: nothing was stored").wait_for(timeout=60_000)
        assert page.get_by_text("step 0").count() == 1

        # Reload mid-step: the page finds the running step, streams it on, and shows the head
        # move when it completes.
        page.reload()
        page.get_by_role("heading", name="What happens next").wait_for(timeout=90_000)
        _idle(page)
        page.get_by_role("button", name="Write this").first.click()
        page.get_by_role("button", name="Stop writing").wait_for(timeout=60_000)
        page.reload()
        page.get_by_role("button", name="Stop writing").wait_for(timeout=60_000)  # reattached
        shot(page, "reattached")
        page.get_by_text("The story moved on: step 1").wait_for(timeout=90_000)
        page.get_by_text("step 1").first.wait_for()
        shot(page, "first-step")

        # The branch tree, and an in-place edit of the paragraph.
        _idle(page)
        page.get_by_role("tab", name="Branches").click()
        page.get_by_test_id("stGraphVizChart").wait_for(timeout=60_000)
        editor = page.get_by_label("Paragraph (edit in place)").first
        editor.fill("Mara buried the letter under a white stone by the well, and waited.")
        page.get_by_role("button", name="Save paragraph").click()
        # The notice is on the Write tab (not the one shown): attached, not visible.
        page.get_by_text("now reads as edited").wait_for(state="attached", timeout=90_000)
        page.get_by_text("Mara buried the letter under a white stone").first.wait_for(
            state="attached"
        )
        shot(page, "edited")

        # The bible fills itself: the model's suggestion, accepted.
        _idle(page)
        page.get_by_role("tab", name="Bible").click()
        page.get_by_text("A one-eyed caravan master.").first.wait_for(timeout=60_000)
        page.locator("button:not([disabled])", has_text="Accept").first.click()
        page.get_by_text("Idris (character)").wait_for(timeout=60_000)
        shot(page, "bible")

        _idle(page)
        page.get_by_role("tab", name="Events").click()
        page.get_by_text("Events along this branch").wait_for(timeout=60_000)
        shot(page, "events")
        browser.close()
    assert len(list(ARTEFACTS.glob("*.png"))) == 8
