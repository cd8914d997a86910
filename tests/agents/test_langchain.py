"""LangChain / LangGraph adapters against the real interfaces: LangChain's standard test suites
for the retriever and the tools, a LangGraph store compared with LangGraph's own in-memory store,
and the HiAgent loop running on a LangChain chat model."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import RetrieversIntegrationTests, ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore

from agents.graphstore import MnemeStore
from agents.hiagent import Agent, AgentConfig
from agents.langchain import EpisodicRetriever, LangChainLLM, blocking, memory_tools
from memory import ChromaVectorIndex, Database, MemoryStore, SqlItemStore, SqlTrajectoryStore
from memory.episodic import EpisodicMemory
from memory.segmentation import SegmenterConfig
from memory.segmenters import FixedSegmenter
from memory.trajectory import TrajectoryStatus
from serving.errors import LogprobsUnsupported
from serving.llm import ChatMessage
from tests.fakes import HashEmbedder

FACTS = " ".join(
    f"Fact {i}: the {colour} lantern hangs in room {i} of the lighthouse."
    for i, colour in enumerate(["red", "blue", "green", "amber", "white", "violet", "black"] * 3)
)


def words(text: str) -> int:
    return len(text.split())


def open_store(folder: Path) -> MemoryStore:
    database = Database(f"sqlite:///{folder / 'mneme.db'}")
    database.upgrade()
    return MemoryStore(database, ChromaVectorIndex(path=folder / "chroma"), HashEmbedder())


def graph_store(store: MemoryStore, *, index_fields: Sequence[str] = ("$",)) -> MnemeStore:
    """A LangGraph store in namespace ``graph``, over the SQL item store."""
    return MnemeStore(store, "graph", items=SqlItemStore(store.database), index_fields=index_fields)


def episodic(store: MemoryStore, namespace: str = "notes") -> EpisodicMemory:
    config = SegmenterConfig(min_tokens=4, max_tokens=16, refine=False)
    return EpisodicMemory(store, namespace, FixedSegmenter(config, words), count_tokens=words)


def with_asyncio(cls: type) -> type:
    """Mark the suite's coroutine tests for pytest-asyncio. LangChain's own repositories run them
    in pytest-asyncio's auto mode; this project keeps strict mode, and the suites forbid
    overriding their tests, so the mark goes on the suite's own functions (used only here)."""
    for name in dir(cls):
        test = getattr(cls, name)
        marks = [m.name for m in getattr(test, "pytestmark", [])]
        if (
            name.startswith("test_")
            and inspect.iscoroutinefunction(test)
            and "asyncio" not in marks
        ):
            pytest.mark.asyncio(test)
    return cls


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> EpisodicMemory:
    memory = episodic(open_store(tmp_path_factory.mktemp("filled")))
    asyncio.run(memory.ingest(FACTS, name="facts"))
    return memory


@with_asyncio
class TestEpisodicRetrieverStandard(RetrieversIntegrationTests):
    memory: EpisodicMemory

    @pytest.fixture(autouse=True)
    def _memory(self, filled: EpisodicMemory) -> None:
        type(self).memory = filled

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return EpisodicRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"memory": self.memory}

    @property
    def retriever_query_example(self) -> str:
        return "which lantern hangs in room 4?"


def test_retriever_documents_carry_citations(filled: EpisodicMemory) -> None:
    documents = EpisodicRetriever(memory=filled, k=2).invoke("amber lantern room 3")
    assert len(documents) == 2
    assert any("amber" in d.page_content for d in documents)
    for document in documents:
        start, end = document.metadata["start"], document.metadata["end"]
        assert FACTS[start:end].strip() == document.page_content.strip()
        assert document.id == str(document.metadata["episode_id"])


class _MemoryToolTests:
    memory: EpisodicMemory
    index = 0

    @pytest.fixture(autouse=True)
    def _memory(self, filled: EpisodicMemory) -> None:
        type(self).memory = filled

    @property
    def tool_constructor(self) -> BaseTool:
        return memory_tools(self.memory)[self.index]

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"text": "The keeper's name is Ada."} if self.index == 0 else {"query": "keeper"}


class TestRememberToolUnit(_MemoryToolTests, ToolsUnitTests):
    pass


@with_asyncio
class TestRememberToolIntegration(_MemoryToolTests, ToolsIntegrationTests):
    pass


class TestRecallToolUnit(_MemoryToolTests, ToolsUnitTests):
    index = 1


@with_asyncio
class TestRecallToolIntegration(_MemoryToolTests, ToolsIntegrationTests):
    index = 1


def test_remember_then_recall(tmp_path: Path) -> None:
    remember, recall = memory_tools(episodic(open_store(tmp_path)))
    assert remember.invoke(
        {"text": "The keeper of the lighthouse is called Ada Byrne."}
    ).startswith("remembered as episodes")
    assert remember.invoke(
        {"text": "The keeper of the lighthouse is called Ada Byrne."}
    ).startswith("already known")
    assert "Ada Byrne" in asyncio.run(recall.ainvoke({"query": "who keeps the lighthouse"}))


# -- LangGraph store ------------------------------------------------------------------------


def exercise(store: BaseStore) -> list[Any]:
    """The same operations on any LangGraph store; returns what they observed."""
    seen: list[Any] = []
    store.put(("users", "ada"), "profile", {"name": "Ada", "age": 36, "tags": ["x"]})
    store.put(("users", "ada", "notes"), "n1", {"text": "likes tea", "rank": 1})
    store.put(("users", "ada", "notes"), "n2", {"text": "hates rain", "rank": 2})
    store.put(("users", "bob"), "profile", {"name": "Bob", "age": 41, "nested": {"k": "v"}})
    store.put(("docs",), "d", {"text": "manual"}, index=False)
    store.put(("users", "ada", "notes"), "n1", {"text": "likes green tea", "rank": 3})
    store.put(("a_b",), "x", {"n": 1})  # LIKE wildcards in labels match only themselves
    store.put(("axb", "c"), "y", {"n": 2})
    store.put(("a%",), "z", {"n": 3})
    store.put(("users", "bob"), "gone", {"text": "temporary"})
    store.delete(("users", "bob"), "gone")
    got = store.get(("users", "ada", "notes"), "n1")
    seen.append(None if got is None else (got.namespace, got.key, got.value))
    seen.append(store.get(("users", "bob"), "gone"))

    def keys(items: list[Any]) -> list[tuple[tuple[str, ...], str]]:
        return sorted((tuple(i.namespace), i.key) for i in items)

    seen.append(keys(store.search(("users",))))
    seen.append(keys(store.search(("a_b",))) + keys(store.search(("a%",))))
    seen.append(keys(store.search(("users", "ada", "notes"), filter={"rank": {"$gte": 2}})))
    seen.append(keys(store.search((), filter={"name": "Bob"})))
    seen.append(keys(store.search((), filter={"nested": {"k": "v"}})))
    store.put(("people",), "p1", {"age": 36})
    store.put(("people",), "p2", {"age": 41})
    seen.append(keys(store.search(("people",), filter={"age": {"$lt": 40, "$ne": 30}})))
    seen.append(keys(store.search((), filter={"tags": ["x"]})))
    seen.append(len(store.search(("users",), limit=2)) + len(store.search(("users",), offset=3)))
    seen.append(store.list_namespaces())
    seen.append(store.list_namespaces(prefix=("users",), max_depth=2))
    seen.append(store.list_namespaces(suffix=("notes",)))
    seen.append(store.list_namespaces(prefix=("users", "*")))
    seen.append(store.list_namespaces(limit=1, offset=1))
    # Last: LangGraph's in-memory store lists a namespace once anything was read from it.
    seen.append(store.get(("nowhere",), "x"))
    return seen


def test_mneme_store_behaves_like_langgraphs_own(tmp_path: Path) -> None:
    ours = exercise(graph_store(open_store(tmp_path)))
    theirs = exercise(InMemoryStore())
    assert ours == theirs


def test_mneme_store_on_sqlite_and_postgresql(store: MemoryStore) -> None:
    assert exercise(graph_store(store)) == exercise(InMemoryStore())


def test_mneme_store_searches_by_meaning_and_persists(tmp_path: Path) -> None:
    store = graph_store(open_store(tmp_path), index_fields=["text"])
    store.put(("mem",), "a", {"text": "the red lantern hangs in the tower"})
    store.put(("mem",), "b", {"text": "bread is baked every morning"})
    store.put(("mem",), "c", {"text": "notes without an index"}, index=False)
    store.put(("other",), "d", {"text": "the red lantern in another namespace"})
    hits = store.search(("mem",), query="where is the red lantern", limit=3)
    assert [h.key for h in hits][:2] == ["a", "b"]
    assert hits[0].score is not None and hits[0].score > (hits[1].score or 0)
    assert hits[2].key == "c" and hits[2].score is None  # unindexed items fill in, unscored
    # Overwriting re-indexes: the old text no longer matches.
    store.put(("mem",), "a", {"text": "bread rolls"})
    assert store.search(("mem",), query="red lantern tower", limit=1)[0].key != "a"
    again = graph_store(open_store(tmp_path))
    item = again.get(("mem",), "a")
    assert item is not None and item.value == {"text": "bread rolls"}
    assert asyncio.run(again.aget(("mem",), "b")) is not None


def test_mneme_store_in_a_langgraph_graph(tmp_path: Path) -> None:
    class State(TypedDict):
        user: str
        reply: str

    def node(state: State, *, store: BaseStore) -> dict[str, str]:
        found = store.get(("users",), state["user"])
        visits = 0 if found is None else int(found.value["visits"])
        store.put(("users",), state["user"], {"visits": visits + 1})
        return {"reply": f"visit {visits + 1}"}

    builder = StateGraph(State)
    builder.add_node("count", node)
    builder.add_edge(START, "count")
    builder.add_edge("count", END)
    graph = builder.compile(store=graph_store(open_store(tmp_path)))
    assert graph.invoke({"user": "ada", "reply": ""})["reply"] == "visit 1"
    assert asyncio.run(graph.ainvoke({"user": "ada", "reply": ""}))["reply"] == "visit 2"


def test_mneme_store_rejects_bad_input(tmp_path: Path) -> None:
    store = graph_store(open_store(tmp_path))
    store.put(("a",), "k", {"n": 1})
    store.put(("a",), "j", {"m": 1})
    # A comparison on a missing field does not match (PostgreSQL's JSONB behaviour; LangGraph's
    # in-memory store raises TypeError there).
    assert [i.key for i in store.search(("a",), filter={"n": {"$gte": 1}})] == ["k"]
    with pytest.raises(ValueError, match="operator '\\$regex' is not supported"):
        store.search(("a",), filter={"n": {"$regex": "x"}})
    with pytest.raises(ValueError, match="periods"):
        store.put(("a.b",), "k", {"n": 1})


# -- the agent loop on a LangChain chat model ----------------------------------------------


def test_agent_runs_on_a_langchain_chat_model(tmp_path: Path) -> None:
    replies = [
        json.dumps({"tool": "open_subgoal", "arguments": {"goal": "add"}}),
        "not json at all",  # repaired by the same bounded loop as every backend
        json.dumps({"tool": "add", "arguments": {"a": 2, "b": 3}}),
        json.dumps({"tool": "finish", "arguments": {"answer": "5"}}),
    ]

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    llm = LangChainLLM(FakeListChatModel(responses=replies), count_tokens=words)
    store = open_store(tmp_path)
    agent = Agent(
        llm,
        store,
        "lc",
        [add],
        trajectories=SqlTrajectoryStore(store.database),
        count_tokens=words,
        config=AgentConfig(summarize=False),
    )
    result = asyncio.run(agent.run("add 2 and 3"))
    assert result.status is TrajectoryStatus.DONE and result.answer == "5"
    assert result.trajectory.subgoals[0].steps[0].observation == "5"


def test_langchain_llm_protocol_surface() -> None:
    llm = LangChainLLM(FakeListChatModel(responses=["hello there"]), count_tokens=words)
    completion = asyncio.run(llm.chat([ChatMessage("user", "hi")]))
    assert completion.text == "hello there" and completion.choices[0].finish_reason == "stop"
    streamed: list[str] = []

    async def stream() -> None:
        async for delta in llm.stream_complete("hi"):
            streamed.append(delta.text)

    asyncio.run(stream())
    assert "".join(streamed) == "hello there"
    with pytest.raises(LogprobsUnsupported, match="MNEME_SEGMENTER=embedding"):
        asyncio.run(llm.token_logprobs("x"))
    assert llm.model == "fake-list-chat-model"


def test_blocking_works_inside_a_running_loop() -> None:
    async def inner() -> int:
        return 7

    async def outer() -> int:
        return blocking(inner())

    assert asyncio.run(outer()) == 7
