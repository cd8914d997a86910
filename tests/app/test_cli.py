"""The ``mneme`` command: db, doctor, and one-line errors with exit codes (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from memory import Database

MNEME = [sys.executable, "-c", "from app.cli import main; main()"]


def mneme(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    environment.update({"MNEME_HOME": str(home), **env})
    return subprocess.run(
        [*MNEME, *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=next(p for p in home.parents if p.is_dir()),
    )


class ModelsHandler(BaseHTTPRequestHandler):
    """A real OpenAI-compatible ``/v1/models`` endpoint on 127.0.0.1."""

    def do_GET(self) -> None:
        body = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]})
        ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer k"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def llm_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ModelsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_help_lists_the_commands(tmp_path: Path) -> None:
    done = mneme("--help", home=tmp_path / "home")
    assert done.returncode == 0
    for command in ("db", "doctor", "ui"):
        assert command in done.stdout


def test_db_upgrade_then_status(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = mneme("db", "upgrade", "--json", home=home)
    assert done.returncode == 0, done.stderr
    head = Database(f"sqlite:///{home / 'mneme.db'}").head_revision()
    assert json.loads(done.stdout)["revision"] == head and head.isdigit()
    status = json.loads(mneme("db", "status", "--json", home=home).stdout)
    assert status["up_to_date"] is True and status["current"] == status["head"]


@pytest.mark.slow
def test_doctor_reports_every_component(tmp_path: Path, llm_server: str) -> None:
    home = tmp_path / "home"
    done = mneme(
        "doctor",
        "--json",
        home=home,
        MNEME_LLM_BASE_URL=llm_server,
        MNEME_LLM_API_KEY="k",
        MNEME_LLM_MODEL="tiny",
    )
    report = json.loads(done.stdout)
    checks = {c["component"]: c for c in report["checks"]}
    assert set(checks) == {"home", "database", "vector_store", "embedder", "llm"}
    assert all(c["ok"] for c in checks.values()), checks
    assert done.returncode == 0 and report["ok"] is True
    assert "serves tiny" in checks["llm"]["detail"]


@pytest.mark.slow
def test_doctor_fails_with_the_fix_when_the_llm_is_down(tmp_path: Path, llm_server: str) -> None:
    done = mneme(
        "doctor",
        "--json",
        home=tmp_path / "home",
        MNEME_LLM_BASE_URL=llm_server,
        MNEME_LLM_API_KEY="wrong",
    )
    checks = {c["component"]: c for c in json.loads(done.stdout)["checks"]}
    assert done.returncode == 1
    assert checks["llm"]["ok"] is False and "MNEME_LLM_API_KEY" in checks["llm"]["detail"]
    assert checks["database"]["ok"] is True
    closed = mneme("doctor", home=tmp_path / "home", MNEME_LLM_BASE_URL="http://127.0.0.1:9/v1")
    assert closed.returncode == 1 and "FAIL  llm" in closed.stdout
    assert "did not answer" in closed.stdout


def test_bad_setting_is_one_line_without_traceback(tmp_path: Path) -> None:
    done = mneme("db", "upgrade", home=tmp_path / "home", MNEME_CHROMA_URL="nope")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: invalid configuration: MNEME_CHROMA_URL: 'nope' is not an http(s) URL; "
        "expected something like http://localhost:8000"
    ]


def test_unwritable_home_and_corrupt_database(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    done = mneme("db", "upgrade", home=blocker / "home")
    assert done.returncode == 2 and "MNEME_HOME" in done.stderr
    assert "Traceback" not in done.stderr
    home = tmp_path / "home"
    home.mkdir()
    (home / "mneme.db").write_bytes(b"garbage" * 1000)
    done = mneme("db", "upgrade", home=home)
    assert done.returncode == 3 and "corrupt" in done.stderr and "Traceback" not in done.stderr
    assert (home / "mneme.db").read_bytes() == b"garbage" * 1000
    debug = mneme("--debug", "db", "upgrade", home=home)
    assert "Traceback" in debug.stderr


# `mneme` with os.execv replaced by a spy that prints, as JSON, the command it would become.
SPY_ON_EXEC = [
    sys.executable,
    "-c",
    "import json, os; os.execv = lambda path, argv: print(json.dumps(argv)); "
    "from app.cli import main; main()",
]


def test_ui_hides_the_deploy_button_and_developer_toolbar(tmp_path: Path) -> None:
    from streamlit.web.cli import main_run

    environment = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    environment["MNEME_HOME"] = str(tmp_path / "home")
    done = subprocess.run(
        [*SPY_ON_EXEC, "ui", "--port", "8765"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    banner, launched = done.stdout.strip().splitlines()
    assert banner == "Mneme is at http://127.0.0.1:8765"
    command = json.loads(launched)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4].endswith("home.py")
    # The installed Streamlit takes every flag (an unknown one would stop `streamlit run`).
    options = main_run.make_context("run", command[4:]).params
    assert options["client_toolbarMode"] == "viewer"  # no Deploy, rerun or clear cache
    assert options["server_port"] == 8765 and options["server_headless"] is True


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    done = mneme("ui", "--port", "0", home=tmp_path / "home")
    assert done.returncode == 2 and "--port" in done.stderr
