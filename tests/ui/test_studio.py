"""ui.studio: one studio a process, in Streamlit's resource cache, replaced by the settings page."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.reading import Reading
from app.settings import load_settings
from app.studio import Studio
from ui import studio as studio_module


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("MNEME_HOME", str(tmp_path))
    studio_module.use(None)
    yield
    studio_module.use(None)


def test_one_studio_is_built_from_the_settings_and_kept(fresh: None, tmp_path: Path) -> None:
    built = studio_module.current()
    assert studio_module.current() is built
    assert built.reading.settings.home == tmp_path


def test_use_replaces_the_studio_and_none_builds_anew(fresh: None, tmp_path: Path) -> None:
    built = studio_module.current()
    given = Studio(Reading(load_settings(home=tmp_path)))
    studio_module.use(given)
    assert studio_module.current() is given
    studio_module.use(None)
    assert studio_module.current() not in (given, built)
