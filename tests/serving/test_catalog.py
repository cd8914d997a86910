"""Locating the built-in engine's weights offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.catalog import DEFAULT_MODEL, locate_model
from serving.errors import ModelNotAvailable


def test_default_model_is_the_bundled_gguf() -> None:
    location = locate_model(None)
    assert location.name == DEFAULT_MODEL
    assert location.path is not None and location.path.suffix == ".gguf"
    assert location.path.stat().st_size > 50_000_000


def test_folders_and_hub_names(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert locate_model(str(tmp_path)).path == tmp_path
    assert locate_model("org/model").path is None
    with pytest.raises(ModelNotAvailable, match=r"config\.json"):
        locate_model(str(tmp_path.parent))
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        locate_model(str(tmp_path / "missing"))
