"""Serving fixtures: a tiny random Llama (built once per session) and engines over it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.engine.config import EngineConfig
from serving.engine.engine import TorchEngine
from serving.local import LocalLLM
from tests.models import build_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_llama: Path) -> Iterator[TorchEngine]:
    engine = TorchEngine(EngineConfig(model=str(tiny_llama), prefill_chunk=5, max_context=256))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def tiny_llm(tiny_engine: TorchEngine) -> LocalLLM:
    return LocalLLM(tiny_engine)
