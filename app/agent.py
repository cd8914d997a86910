"""Composition of HiAgent from settings: the store, token counter and LLM that ``Reading`` owns,
the SQL trajectory store for working memory, plus an episodic memory per agent namespace (each
finished trajectory one document); and LangGraph stores over the SQL item store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from agents.errors import AgentConfigError
from agents.graphstore import MnemeStore
from agents.hiagent import Agent, AgentConfig
from agents.sync import SyncAgent
from app.reading import Reading
from app.settings import Settings
from memory import MemoryStore, SqlItemStore, SqlTrajectoryStore
from memory.episodic import EpisodicMemory, RecallDefaults
from memory.segmentation import SegmenterConfig
from memory.segmenters import FixedSegmenter
from serving.llm import LLM

TEMPLATE_TOKENS = 64
"""Tokens kept free in the context for the chat template around the prompt."""
MIN_PROMPT_TOKENS = 768
"""Smallest prompt an agent is built with: instructions, tool list and some working memory."""


class Agents:
    """Builds agents over one store and one LLM (loaded on first use). Close it when done."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: MemoryStore | None = None,
        llm: LLM | None = None,
    ) -> None:
        self.reading = Reading(settings, store=store, llm=llm)

    def memory(self, namespace: str) -> EpisodicMemory:
        """The agent's long-term memory: trajectories cut into windows of up to 512 tokens."""
        counter = self.reading.count_tokens
        return EpisodicMemory(
            self.reading.store,
            namespace,
            FixedSegmenter(SegmenterConfig(min_tokens=16, max_tokens=512), counter),
            count_tokens=counter,
            defaults=RecallDefaults(budget_tokens=self.reading.settings.recall_budget_tokens),
        )

    def agent(
        self,
        namespace: str,
        tools: Iterable[Any] = (),
        config: AgentConfig | None = None,
    ) -> Agent:
        """A HiAgent in ``namespace`` (working and episodic memory) whose prompts fit the LLM."""
        chosen = config or AgentConfig()
        context = self.reading.context_tokens()
        room = context - chosen.reply_tokens - TEMPLATE_TOKENS
        if room < MIN_PROMPT_TOKENS:
            raise AgentConfigError(
                f"the LLM's context of {context} tokens is too small for an agent: its prompt "
                f"needs at least {MIN_PROMPT_TOKENS} tokens plus {chosen.reply_tokens} for the "
                f"reply; use a model with a longer context (MNEME_LLM_MODEL) or, if the "
                "context is larger than assumed, set MNEME_LLM_CONTEXT_TOKENS"
            )
        if room < chosen.prompt_tokens:
            chosen = replace(chosen, prompt_tokens=room)
        return Agent(
            self.reading.llm,
            self.reading.store,
            namespace,
            tools,
            trajectories=SqlTrajectoryStore(self.reading.store.database),
            memory=self.memory(namespace),
            count_tokens=self.reading.count_tokens,
            config=chosen,
        )

    def sync_agent(
        self, namespace: str, tools: Iterable[Any] = (), config: AgentConfig | None = None
    ) -> SyncAgent:
        return SyncAgent(self.agent(namespace, tools, config))

    def graph_store(self, namespace: str, index_fields: Sequence[str] = ("$",)) -> MnemeStore:
        """A LangGraph ``BaseStore`` in ``namespace``: items in SQL, searched by meaning through
        the store's embedder (``index_fields``: the JSON paths embedded; ``"$"``: all the value)."""
        store = self.reading.store
        return MnemeStore(
            store, namespace, items=SqlItemStore(store.database), index_fields=index_fields
        )

    def close(self) -> None:
        self.reading.close()
