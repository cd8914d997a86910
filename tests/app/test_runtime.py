"""Wiring: which LLM backend the settings select."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.runtime import open_llm
from app.settings import load_settings
from serving.errors import LLMUnavailable
from serving.local import LocalLLM
from serving.openai_client import OpenAICompatibleLLM


def test_a_base_url_selects_the_openai_client(tmp_path: Path) -> None:
    settings = load_settings(
        home=tmp_path, llm_base_url="http://127.0.0.1:9/v1", llm_model="m", llm_timeout_s=1.0
    )
    llm = open_llm(settings)
    assert isinstance(llm, OpenAICompatibleLLM) and llm.model == "m"
    with pytest.raises(LLMUnavailable, match=r"127\.0\.0\.1:9"):
        asyncio.run(llm.complete("hi"))


@pytest.mark.slow
def test_no_base_url_selects_the_built_in_engine(tmp_path: Path) -> None:
    from tests.models import build_tiny_llama

    folder = build_tiny_llama(tmp_path / "model")
    llm = open_llm(load_settings(home=tmp_path, llm_model=str(folder)))
    assert isinstance(llm, LocalLLM)
    try:
        assert asyncio.run(llm.count_tokens("one two")) > 0
    finally:
        llm.close()
