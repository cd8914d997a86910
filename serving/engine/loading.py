"""Loading a causal LM and its tokenizer for the engine, offline first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serving.catalog import locate_model
from serving.engine.attention import ATTENTION_NAME, register_with_transformers
from serving.engine.config import EngineConfig
from serving.errors import ModelNotAvailable


@dataclass(frozen=True, slots=True)
class LoadedModel:
    name: str
    model: Any  # a transformers PreTrainedModel using Mneme's attention
    tokenizer: Any
    max_context: int
    stop_token_ids: tuple[int, ...]
    vocab_size: int  # rows of the output layer (may exceed len(tokenizer))
    num_layers: int
    kv_heads: int
    head_dim: int


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            name
        ]
    except KeyError:
        raise ModelNotAvailable(
            f"dtype {name!r} is not one of float32, float16, bfloat16, auto"
        ) from None


def load_model(config: EngineConfig) -> LoadedModel:
    """Load the model named in ``config``; :class:`ModelNotAvailable` says how to fix a failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    register_with_transformers()
    location = locate_model(config.model)
    source: str = location.name
    extra: dict[str, Any] = {"local_files_only": not config.allow_download}
    if location.path is not None:
        source = str(location.path)
        if location.path.suffix == ".gguf":
            source, extra["gguf_file"] = str(location.path.parent), location.path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
        model: Any = AutoModelForCausalLM.from_pretrained(
            source, dtype=_dtype(config.dtype, config.device), **extra
        )
    except (OSError, ValueError) as err:
        raise ModelNotAvailable(
            f"cannot load the model {location.name!r}: {str(err).splitlines()[0]}; set "
            "MNEME_LLM_MODEL to a local model folder (or leave it unset for the bundled "
            "SmolLM2), or MNEME_LLM_BASE_URL to an OpenAI-compatible server"
        ) from err
    model.config._attn_implementation = ATTENTION_NAME
    model.to(config.device).eval()
    text_config = model.config.get_text_config()
    heads = int(text_config.num_attention_heads)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(generation_eos, int):
        stops.add(generation_eos)
    elif generation_eos:
        stops.update(generation_eos)
    positions = int(getattr(text_config, "max_position_embeddings", 2048))
    return LoadedModel(
        name=location.name,
        model=model,
        tokenizer=tokenizer,
        max_context=min(config.max_context or positions, positions),
        stop_token_ids=tuple(sorted(stops)),
        vocab_size=int(model.get_output_embeddings().weight.shape[0]),
        num_layers=int(text_config.num_hidden_layers),
        kv_heads=int(getattr(text_config, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
    )
