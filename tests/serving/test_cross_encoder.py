"""The cross-encoder reranker loads a real sentence-transformers CrossEncoder from a local folder
(a tiny random BERT built here: no model ships and no hub is reachable) and recall uses it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.reading import Reading
from app.settings import load_settings
from memory import ChromaVectorIndex, Database, MemoryStore
from serving.cross_encoder import CrossEncoderScorer
from serving.errors import ModelNotAvailable
from tests.fakes import HashEmbedder

WORDS = [
    "the",
    "keeper",
    "polished",
    "lens",
    "storm",
    "kite",
    "zeppelin",
    "pilot",
    "sold",
    "a",
    "to",
    "lantern",
    "maker",
]


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = tmp_path_factory.mktemp("cross-encoder")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_labels=1)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_local_cross_encoder_scores_pairs(tiny_cross_encoder: Path) -> None:
    scorer = CrossEncoderScorer(tiny_cross_encoder)
    scores = scorer.score("the kite", ["the keeper polished the lens", "a kite sold to a pilot"])
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)
    assert scorer.score("the kite", []) == []
    assert scorer.name == f"cross-encoder:{tiny_cross_encoder.name}"


def test_a_folder_that_is_no_model_is_named_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match=r"MNEME_CROSS_ENCODER=.*no config\.json"):
        CrossEncoderScorer(tmp_path).score("q", ["p"])


def test_recall_reranks_with_the_configured_cross_encoder(
    tmp_path: Path, tiny_cross_encoder: Path
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'mneme.db'}")
    database.upgrade()
    store = MemoryStore(database, ChromaVectorIndex(path=tmp_path / "chroma"), HashEmbedder())
    settings = load_settings(home=tmp_path, cross_encoder=tiny_cross_encoder)
    reading = Reading(settings, store=store)
    try:
        scorer = reading.cross_encoder
        assert isinstance(scorer, CrossEncoderScorer)
        memory = reading.memory("docs", "fixed")
        assert memory.scorer is scorer
        asyncio.run(memory.ingest("The keeper polished the lens. A kite was sold to a pilot."))
        hits = asyncio.run(memory.search("kite", budget_tokens=64))
        assert hits and scorer._model is not None  # the model was loaded and read the pairs
    finally:
        reading.close()
    assert Reading(load_settings(home=tmp_path), store=store).cross_encoder is None  # default
