"""The RankGen scorer on a tiny random T5: shapes, batching, the prefix cache, loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from serving.errors import ModelNotAvailable
from serving.rerank.config import ScorerConfig
from serving.rerank.rankgen import RankGenReranker

PREFIX = "The old lighthouse keeper climbed the stairs every night, counting each step aloud."
CANDIDATES = [
    "He reached the lamp room and trimmed the wick.",
    "Bananas are rich in potassium.",
    "At the top, the wind howled through the broken pane, and he pulled his coat tighter "
    "around his shoulders before lighting the great lamp once more.",
    "",
    "Step two hundred and twelve creaked, as it always did.",
]


def test_vectors_have_the_model_width(tiny_rankgen: RankGenReranker) -> None:
    vectors = tiny_rankgen.encode(CANDIDATES, "candidate")
    assert vectors.shape == (len(CANDIDATES), 32) and vectors.dtype == torch.float32
    assert len(tiny_rankgen.score(PREFIX, CANDIDATES)) == len(CANDIDATES)
    assert tiny_rankgen.score(PREFIX, []) == []


def test_score_is_the_dot_product_of_projected_first_tokens(
    tiny_rankgen: RankGenReranker, tokenizer: Any
) -> None:
    """The reference path: one text at a time, straight through encoder and projection."""

    def vector(text: str) -> torch.Tensor:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            hidden = tiny_rankgen.encoder(input_ids=ids).last_hidden_state[:, 0]
            projected: torch.Tensor = tiny_rankgen.projection(hidden)[0]
            return projected

    prefix = vector("pre " + PREFIX)
    expected = torch.stack([vector("suffi " + c) @ prefix for c in CANDIDATES])
    scores = torch.tensor(tiny_rankgen.score(PREFIX, CANDIDATES))
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)


def test_batched_equals_one_by_one(tiny_rankgen: RankGenReranker) -> None:
    batched = tiny_rankgen.score(PREFIX, CANDIDATES)  # batch_size=3: two padded batches
    single = [tiny_rankgen.score(PREFIX, [c])[0] for c in CANDIDATES]
    torch.testing.assert_close(torch.tensor(batched), torch.tensor(single), rtol=1e-4, atol=1e-5)


def test_top_is_the_best_scores_in_order(tiny_rankgen: RankGenReranker) -> None:
    scores = tiny_rankgen.score(PREFIX, CANDIDATES)
    best = tiny_rankgen.top(PREFIX, CANDIDATES, 3)
    assert [r.index for r in best] == sorted(range(5), key=lambda i: -scores[i])[:3]
    assert [r.text for r in best] == [CANDIDATES[r.index] for r in best]
    assert len(tiny_rankgen.top(PREFIX, CANDIDATES, 99)) == len(CANDIDATES)


def test_the_prefix_is_encoded_once_and_reused(tokenizer: Any) -> None:
    scorer = RankGenReranker.random(tokenizer, d_model=16, num_layers=1, num_heads=2, d_kv=8)
    calls: list[int] = []
    scorer.encoder.register_forward_hook(lambda *_: calls.append(1))
    first = scorer.score(PREFIX, CANDIDATES[:2])
    second = scorer.score(PREFIX, CANDIDATES[:2])
    assert first == second
    assert scorer.prefixes.misses == 1 and scorer.prefixes.hits == 1
    assert len(calls) == 3  # prefix once, candidates twice (one batch each)
    scorer.score(PREFIX + " And then?", CANDIDATES[:2])
    assert scorer.prefixes.misses == 2


def test_long_inputs_are_cut_to_the_rankgen_limits(tokenizer: Any) -> None:
    config = ScorerConfig(device="cpu", prefix_tokens=16, candidate_tokens=8)
    scorer = RankGenReranker.random(
        tokenizer, config=config, d_model=16, num_layers=1, num_heads=2, d_kv=8
    )
    lengths: list[int] = []
    scorer.encoder.register_forward_pre_hook(
        lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    long_text = "word " * 200
    scorer.score(long_text, [long_text])
    assert lengths == [16, 8]
    # a long prefix keeps its end: changing its start changes nothing, its end does
    same = scorer.score("Different start. " + long_text, ["x"])
    assert same == scorer.score(long_text, ["x"])
    assert scorer.score(long_text + " storm", ["x"]) != same


def test_saved_checkpoint_loads_back(tiny_rankgen: RankGenReranker, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tiny_rankgen.save(tmp_path / "rankgen")
    keys = set(load_file(str(tmp_path / "rankgen" / "model.safetensors")))
    assert "projection.weight" in keys and all(
        k.startswith("t5_encoder.") for k in keys - {"projection.weight"}
    )  # the published checkpoints' layout
    loaded = RankGenReranker.load(str(tmp_path / "rankgen"), ScorerConfig(device="cpu"))
    torch.testing.assert_close(
        torch.tensor(loaded.score(PREFIX, CANDIDATES)),
        torch.tensor(tiny_rankgen.score(PREFIX, CANDIDATES)),
    )


def test_missing_models_fail_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"rankgen-t5-base-all.*local folder"):
        RankGenReranker.load("rankgen-t5-base-all")
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        RankGenReranker.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match=r"no config\.json"):
        RankGenReranker.load(str(tmp_path / "empty"))
