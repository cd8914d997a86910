"""Mneme's built-in inference engine: any ``transformers`` causal LM, served with a KV cache,
batched decoding of concurrent requests, streaming, stop sequences, seeds, grammar-constrained
decoding and a pluggable attention interface (``serving.engine.attention``)."""
