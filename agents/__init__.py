"""Agents over memory and the LLM boundary: the writer, HiAgent, the document reader."""
