"""AttentionConfig: every bad field named with what is valid, and its JSON form."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from serving.kernels.config import AttentionConfig
from serving.kernels.errors import AttentionSettingsError

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "dense"}, "mode='dense' is not one of full, blocks, retrieval"),
        ({"representative": "max"}, "representative='max' is not one of bounds, mean"),
        ({"positions": "far"}, "positions='far' is not one of original, fixed, packed"),
        ({"prefill": "lazy"}, "prefill='lazy' is not one of exact, sparse"),
        ({"mode": "retrieval", "prefill": "sparse"}, "prefill='sparse' is for 'blocks'"),
        ({"budget": 0}, "budget=0 must be at least 1"),
        ({"sinks": -1}, "sinks=-1 must be at least 0"),
        ({"window": 0}, "window=0 must be at least 1"),
        ({"block_size": 0}, "block_size=0 must be at least 1"),
        ({"neighbours": -1}, "neighbours=-1 must be at least 0"),
        ({"retrieval_segment": 0}, "retrieval_segment=0 must be at least 1"),
        ({"retrieval_degree": 1}, "retrieval_degree=1 must be at least 2"),
        ({"budget": "2048"}, "budget='2048' must be a whole number"),
        ({"window": 2.5}, "window=2.5 must be a whole number"),
        ({"neighbours": True}, "neighbours=True must be a whole number"),
    ],
)
def test_each_bad_field_is_named_with_what_is_valid(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(AttentionSettingsError, match=f"^{message}"):
        AttentionConfig(**settings)


@pytest.mark.parametrize(
    ("settings", "needed"),
    [
        # blocks: sinks + window + the open block and one chosen block with its neighbours
        ({"mode": "blocks", "neighbours": 1}, 16 + 256 + 4 * 16),
        # retrieval: sinks + window + the open segment + a few retrieved keys
        ({"mode": "retrieval", "retrieval_segment": 64}, 16 + 256 + 64 + 16),
    ],
)
def test_a_budget_below_what_the_mode_needs_names_the_fix(
    settings: dict[str, Any], needed: int
) -> None:
    assert AttentionConfig(**settings, budget=needed).minimum_budget == needed
    with pytest.raises(AttentionSettingsError) as caught:
        AttentionConfig(**settings, budget=needed - 1)
    assert str(caught.value).startswith(f"budget={needed - 1} is below")
    assert f"({needed} = 16 sinks + 256 window" in str(caught.value)
    assert "raise --attention-budget" in str(caught.value)


def test_full_attention_has_no_budget_to_fit() -> None:
    assert AttentionConfig(budget=1).minimum_budget == 0


def test_defaults_are_the_engines() -> None:
    config = AttentionConfig()
    assert (config.mode, config.budget, config.sinks, config.window) == ("full", 2048, 16, 256)
    assert (config.block_size, config.representative, config.neighbours) == (16, "bounds", 0)
    assert (config.retrieval_segment, config.retrieval_degree) == (128, 32)
    assert config.positions == "original"


def test_json_round_trip() -> None:
    config = AttentionConfig(
        mode="retrieval",
        budget=4096,
        sinks=4,
        window=512,
        block_size=32,
        representative="mean",
        neighbours=2,
        retrieval_segment=64,
        retrieval_degree=16,
        positions="packed",
    )
    text = config.to_json()
    assert json.loads(text) == dataclasses.asdict(config)
    assert AttentionConfig.from_json(text) == config
    assert AttentionConfig.from_json("{}") == AttentionConfig()
    assert AttentionConfig.from_json('{"mode": "blocks"}') == AttentionConfig(mode="blocks")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("budget=3", "attention settings are not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"attention": "blocks"}', r"unknown attention settings \['attention'\]; known: mode,"),
        ('{"mode": "sparse"}', "mode='sparse' is not one of full, blocks, retrieval"),
        ('{"budget": null}', "budget=None must be a whole number"),
        ('{"mode": "blocks", "budget": 100}', "budget=100 is below"),
    ],
)
def test_bad_json_is_named(text: str, message: str) -> None:
    with pytest.raises(AttentionSettingsError, match=message):
        AttentionConfig.from_json(text)


def test_every_field_has_help() -> None:
    for field in dataclasses.fields(AttentionConfig):
        assert AttentionConfig.describe(field.name).endswith(".")
    assert AttentionConfig.describe("budget") == (
        "blocks/retrieval: cached tokens each query attends to (sinks + window + selected)."
    )
    with pytest.raises(KeyError):
        AttentionConfig.describe("attention_budget")


def test_importing_the_config_imports_no_torch() -> None:
    # the vLLM plugin reads it in every vLLM process
    code = "import sys, serving.kernels.config; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "False"
