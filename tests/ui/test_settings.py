"""The settings page: a connection test against a real endpoint on 127.0.0.1, and bad input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.reading import Reading
from app.settings import load_settings
from app.studio import Studio
from memory import MemoryStore
from tests.app.test_cli import llm_server  # noqa: F401  (the fixture)
from tests.net import free_port
from ui import studio as studio_module

SCRIPT = "from ui.settings import main\nmain()\n"


@pytest.fixture
def studio(store: MemoryStore, tmp_path: Path) -> Iterator[Studio]:
    studio = Studio(Reading(load_settings(home=tmp_path), store=store))
    studio_module.use(studio)
    yield studio
    studio_module.use(None)


def submit(
    url: str, model: str, key: str, button: str, drafts: int = 1, scorer: str = "embedder"
) -> AppTest:
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    endpoint, name, secret, reranker = app.text_input
    endpoint.input(url)
    name.input(model)
    secret.input(key)
    app.number_input[0].set_value(drafts)
    reranker.input(scorer)
    next(b for b in app.button if b.label == button).click().run()
    assert not app.exception
    return app


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_connection_test_and_apply(studio: Studio, llm_server: str) -> None:  # noqa: F811
    app = submit(llm_server, "tiny", "k", "Test connection")
    assert "serves tiny" in app.success[0].value
    app = AppTest.from_string(SCRIPT, default_timeout=60).run()
    app.text_input[0].input(llm_server)
    app.text_input[1].input("tiny")
    app.text_input[2].input("k")
    next(n for n in app.number_input if n.label.startswith("Repetition")).set_value(1.3)
    next(n for n in app.number_input if n.label == "Min p").set_value(0.1)
    next(b for b in app.button if b.label == "Apply").click().run()
    assert not app.exception
    assert studio_module.current() is not studio
    applied = studio_module.current()
    assert applied.reading.settings.llm_base_url == llm_server
    config = applied.writing.config  # what the next step samples with
    assert config.repetition_penalty == 1.3 and config.min_p == 0.1


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_bad_endpoints_are_explained(studio: Studio, llm_server: str) -> None:  # noqa: F811
    app = submit("nope", "", "", "Test connection")
    assert "MNEME_LLM_BASE_URL" in app.error[0].value
    app = submit(f"http://127.0.0.1:{free_port()}/v1", "", "", "Apply")
    assert "did not answer" in app.error[0].value and studio_module.current() is studio
    app = submit(llm_server, "tiny", "wrong", "Test connection")
    assert "401" in app.error[0].value


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_reranking_is_set_and_a_bad_scorer_explained(studio: Studio, llm_server: str) -> None:  # noqa: F811
    app = submit(llm_server, "tiny", "k", "Apply", drafts=3, scorer="no-such-scorer")
    assert "unknown rerank scorer 'no-such-scorer'" in app.error[0].value
    assert studio_module.current() is studio  # nothing applied
    app = submit(llm_server, "tiny", "k", "Apply", drafts=3, scorer="embedder")
    assert any("Reranker ready" in s.value for s in app.success)
    assert studio_module.current().reading.settings.writer_candidates == 3
