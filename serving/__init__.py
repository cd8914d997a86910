"""The model boundary: LLM clients and engines, embeddings, token counting, kernels, reranking.

``torch``, ``transformers`` and ``sentence-transformers`` are imported lazily, inside the
functions that need them, so importing this package stays fast.
"""
