"""Mneme's vLLM backend: a launcher for vLLM's OpenAI-compatible server and Mneme's vLLM plugin.

- :mod:`serving.vllm.launcher`: run ``python -m vllm.entrypoints.openai.api_server`` as a
  subprocess (vLLM may live in another venv), forward its output, wait until it answers, stop it.
- :mod:`serving.vllm.plugin`: the ``vllm.general_plugins`` entry point loaded inside every vLLM
  process; where Mneme attaches its attention backends.

Nothing is imported here: vLLM imports ``serving.vllm.plugin`` in each of its processes, and that
import must stay cheap.
"""
