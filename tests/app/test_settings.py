"""Settings: defaults, the environment, and bad values named at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import SettingsError
from app.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "DATABASE_URL",
        "CHROMA_URL",
        "LLM_BASE_URL",
        "LLM_MODEL",
        "LLM_API_KEY",
        "EMBEDDING_MODEL",
        "HOME",
    ):
        monkeypatch.delenv(f"MNEME_{name}", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings()
    assert settings.home == tmp_path / ".mneme"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / '.mneme' / 'mneme.db'}"
    assert settings.chroma_url is None and settings.chroma_path == tmp_path / ".mneme" / "chroma"
    assert settings.llm_base_url is None and settings.is_embedded_sqlite
    assert settings.embedding_model == "all-MiniLM-L6-v2"


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNEME_HOME", "~/somewhere")
    monkeypatch.setenv("MNEME_DATABASE_URL", "postgresql+psycopg://u:p@db/mneme")
    monkeypatch.setenv("MNEME_CHROMA_URL", "http://chroma:8000/")
    monkeypatch.setenv("MNEME_LLM_BASE_URL", "http://gpu:8000/v1/")
    monkeypatch.setenv("MNEME_LLM_MODEL", "Qwen/Qwen2.5-7B-Instruct")
    settings = load_settings()
    assert settings.home == Path("~/somewhere").expanduser()
    assert settings.resolved_database_url == "postgresql+psycopg://u:p@db/mneme"
    assert not settings.is_embedded_sqlite
    assert settings.chroma_url == "http://chroma:8000"
    assert settings.llm_base_url == "http://gpu:8000/v1"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MNEME_DATABASE_URL", "not a url", "MNEME_DATABASE_URL: 'not a url' is not a database"),
        ("MNEME_DATABASE_URL", "mysql://u@h/db", "MNEME_DATABASE_URL: backend 'mysql'"),
        ("MNEME_CHROMA_URL", "chroma:8000", "MNEME_CHROMA_URL: 'chroma:8000' is not an http(s)"),
        ("MNEME_LLM_BASE_URL", "ftp://x", "MNEME_LLM_BASE_URL: 'ftp://x' is not an http(s)"),
        ("MNEME_EMBEDDING_MODEL", "  ", "MNEME_EMBEDDING_MODEL: is empty"),
        ("MNEME_HOME", "", "MNEME_HOME: is empty"),
        ("MNEME_LLM_TIMEOUT_S", "-3", "MNEME_LLM_TIMEOUT_S: Input should be greater than 0"),
        ("MNEME_RERANK_FOLDERS", "xl", "MNEME_RERANK_FOLDERS: entry 'xl' is not name=/path"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert expected in str(caught.value)


def test_rerank_folders_name_local_scorers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MNEME_RERANK_FOLDERS", "xl=/models/rankgen-xl, tiny=/tmp/t")
    assert load_settings().scorer_folders == {"xl": "/models/rankgen-xl", "tiny": "/tmp/t"}
