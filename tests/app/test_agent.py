"""app.agent: agents built from settings fit the LLM's context and remember across tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.errors import AgentConfigError
from app.agent import Agents
from app.settings import load_settings
from memory import MemoryStore, SqlItemStore
from memory.trajectory import TrajectoryStatus
from tests.fakes import ScriptedLLM


def calls(*replies: dict[str, object]) -> ScriptedLLM:
    queue = [json.dumps(r) for r in replies]

    def reply(prompt: str, _: int) -> str:
        if prompt.startswith("Summarise this finished subgoal"):
            return json.dumps({"summary": "the lamp was lit"})
        return queue.pop(0)

    return ScriptedLLM(reply)


def test_agents_fit_the_context_and_remember(store: MemoryStore, tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path, llm_context_tokens=2048)
    llm = calls(
        {"tool": "open_subgoal", "arguments": {"goal": "light the lamp"}},
        {"tool": "light", "arguments": {}},
        {"tool": "finish", "arguments": {"answer": "lit"}},
    )
    agents = Agents(settings, store=store, llm=llm)

    def light() -> str:
        """Light the lamp."""
        return "the lamp glows"

    with agents.sync_agent("agent:lamp", [light]) as agent:
        assert agent.agent.config.prompt_tokens == 2048 - 256 - 64
        result = agent.run("light the lamp in the hall")
    assert result.status is TrajectoryStatus.DONE
    hits = agents.memory("agent:lamp").store.search("agent:lamp", "lamp glows", k=1)
    assert "the lamp glows" in hits[0].episode.text
    agents.close()


def test_a_context_too_small_for_an_agent_names_the_fix(store: MemoryStore, tmp_path: Path) -> None:
    # The tiny pretrained model (stories260K) has a 512-token context.
    agents = Agents(load_settings(home=tmp_path, llm_context_tokens=512), store=store, llm=calls())
    with pytest.raises(AgentConfigError, match="context of 512 tokens is too small"):
        agents.agent("agent:small")


def test_graph_store_keeps_items_in_sql_and_searches_by_meaning(
    store: MemoryStore, tmp_path: Path
) -> None:
    agents = Agents(load_settings(home=tmp_path), store=store, llm=calls())
    graph = agents.graph_store("graph:notes", index_fields=["text"])
    graph.put(("notes",), "lamp", {"text": "the brass lamp hangs in the hall"})
    graph.put(("notes",), "bread", {"text": "bread is baked every morning"})
    hits = graph.search(("notes",), query="where is the brass lamp", limit=2)
    assert [h.key for h in hits] == ["lamp", "bread"]
    stored = SqlItemStore(store.database).get("graph:notes", ("notes",), "lamp")
    assert stored is not None and stored.value == {"text": "the brass lamp hangs in the hall"}
    assert stored.episode_id is not None  # indexed: its text is an episode of the namespace
    again = agents.graph_store("graph:notes").get(("notes",), "bread")
    assert again is not None and again.value == {"text": "bread is baked every morning"}
    agents.close()
