"""Mneme's OpenAI-compatible HTTP server over the built-in engine (``mneme llm serve``)."""
