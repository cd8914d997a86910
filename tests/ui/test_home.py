"""The web app's home page: Streamlit's AppTest, and `mneme ui` serving on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from streamlit.testing.v1 import AppTest

from memory import Database, NewEpisode
from memory.episodes import SqlEpisodeStore
from memory.namespaces import SqlNamespaceStore
from tests.net import free_port

PAGE = str(Path(__file__).resolve().parents[2] / "ui" / "home.py")


def test_home_shows_what_memory_holds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MNEME_HOME", str(tmp_path))
    database = Database(f"sqlite:///{tmp_path / 'mneme.db'}")
    database.upgrade()
    SqlNamespaceStore(database).ensure("story", embedding_model="m", embedding_dim=2)
    SqlEpisodeStore(database).add("story", [NewEpisode(text="one"), NewEpisode(text="two")])
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    metrics = {m.label: m.value for m in app.metric}
    assert metrics == {"Namespaces": "1", "Episodes": "2", "Documents": "0"}


def test_home_explains_a_broken_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MNEME_HOME", str(tmp_path))
    (tmp_path / "mneme.db").write_bytes(b"garbage" * 500)
    app = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not app.exception
    assert "corrupt" in app.error[0].value


@pytest.mark.slow
def test_mneme_ui_serves_the_page(tmp_path: Path) -> None:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    environment["MNEME_HOME"] = str(tmp_path / "home")
    server = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "ui", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        deadline, health = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert health is not None and health.status_code == 200 and health.text == "ok"
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and '<div id="root">' in page.text
        assert (tmp_path / "home" / "mneme.db").exists()  # migrated before serving
    finally:
        server.terminate()
        server.wait(timeout=30)
