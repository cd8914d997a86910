"""LangChain adapters: Mneme's episodic memory for LangChain, LangChain chat models for Mneme.

- :class:`EpisodicRetriever`: a ``BaseRetriever`` over :class:`~memory.episodic.EpisodicMemory`
  (EM-LLM's two-stage recall, documents with their citations in the metadata).
- :func:`memory_tools`: ``remember`` / ``recall`` tools any LangChain or LangGraph agent can call.
- :class:`LangChainLLM`: Mneme's ``LLM`` Protocol over a LangChain chat model, so
  :class:`~agents.hiagent.Agent` (and the writer and the reader) run on any of them.
- The LangGraph store is :class:`agents.graphstore.MnemeStore`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ConfigDict, Field

from base.bridge import blocking
from memory.episodic import EpisodicMemory
from memory.retrieval import Recall
from memory.segmentation import approximate_tokens
from serving.errors import LLMUnavailable, LogprobsUnsupported
from serving.llm import (
    GREEDY,
    Capabilities,
    ChatMessage,
    Choice,
    Completion,
    OnText,
    SamplingParams,
    Schema,
    StreamDelta,
    TokenLogprob,
)
from serving.structured import Accumulator, validated


def to_document(hit: Recall) -> Document:
    return Document(
        id=str(hit.episode_id),
        page_content=hit.text,
        metadata={
            "episode_id": hit.episode_id,
            "document_id": hit.document_id,
            "start": hit.start,
            "end": hit.end,
            "tokens": hit.tokens,
            "score": hit.score,
            "reason": hit.reason,
        },
    )


class EpisodicRetriever(BaseRetriever):
    """The ``k`` best episodes for a query (similarity, then contiguity neighbours, within
    ``budget_tokens``), returned in document order. ``k`` may also be passed per call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: EpisodicMemory
    k: int = Field(default=4, ge=1, description="Most documents returned.")
    k_contiguous: int = Field(default=4, ge=0, description="Neighbours considered per search.")
    budget_tokens: int | None = Field(default=None, description="Token budget; None = default.")

    async def _search(self, query: str, k: int | None) -> list[Document]:
        wanted = self.k if k is None else k
        hits = await self.memory.search(
            query,
            budget_tokens=self.budget_tokens,
            k_similar=wanted,
            k_contiguous=self.k_contiguous,
        )
        best = sorted(hits, key=lambda h: h.score, reverse=True)[:wanted]
        return [to_document(h) for h in hits if h in best]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        return blocking(self._search(query, k))

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        return await self._search(query, k)


def memory_tools(memory: EpisodicMemory, *, budget_tokens: int = 512) -> list[BaseTool]:
    """``remember(text)`` stores a note in ``memory``; ``recall(query)`` returns what it holds
    about ``query`` within ``budget_tokens``. Both work sync and async."""

    async def remember(text: str) -> str:
        """Store a note in long-term memory so it can be recalled later."""
        ingested = await memory.ingest(text, name="remembered", metadata={"via": "remember"})
        ids = [e.id for e in ingested.episodes]
        return f"remembered as episodes {ids}" if ingested.created else f"already known: {ids}"

    async def recall(query: str) -> str:
        """Recall what long-term memory holds about the query."""
        hits = await memory.search(query, budget_tokens=budget_tokens)
        return "\n\n".join(h.text for h in hits) or "nothing recalled"

    return [
        StructuredTool.from_function(
            func=lambda text: blocking(remember(text)),
            coroutine=remember,
            name="remember",
            description=remember.__doc__ or "",
        ),
        StructuredTool.from_function(
            func=lambda query: blocking(recall(query)),
            coroutine=recall,
            name="recall",
            description=recall.__doc__ or "",
        ),
    ]


def to_langchain(messages: Sequence[ChatMessage]) -> list[BaseMessage]:
    converted: list[BaseMessage] = []
    for message in messages:
        if message.role == "system":
            converted.append(SystemMessage(message.content))
        elif message.role == "assistant":
            converted.append(AIMessage(message.content))
        elif message.role == "tool":  # no tool-call id in Mneme's messages: a user turn
            converted.append(HumanMessage(f"Tool result: {message.content}"))
        else:
            converted.append(HumanMessage(message.content))
    return converted


class LangChainLLM:
    """Mneme's ``LLM`` over a LangChain chat model.

    ``chat`` and ``generate_json`` go through the model's ``ainvoke`` / ``astream`` (JSON replies
    validated and repaired like every backend's, see :mod:`serving.structured`); ``stop`` is
    passed on, other sampling settings are the chat model's own (set them when building it).
    Token logprobs are not offered (:class:`LogprobsUnsupported`); tokens are counted with
    ``count_tokens``.
    """

    capabilities = Capabilities()

    def __init__(
        self,
        chat_model: BaseChatModel,
        *,
        count_tokens: Callable[[str], int] = approximate_tokens,
        repairs: int = 2,
    ) -> None:
        self.chat_model = chat_model
        self._count = count_tokens
        self.repairs = repairs

    @property
    def model(self) -> str:
        return str(getattr(self.chat_model, "model_name", None) or self.chat_model._llm_type)

    def _stop(self, params: SamplingParams) -> list[str] | None:
        return list(params.stop) or None

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        try:
            reply = await self.chat_model.ainvoke(to_langchain(messages), stop=self._stop(params))
        except (ConnectionError, TimeoutError) as err:
            raise LLMUnavailable(f"the LangChain chat model {self.model} failed: {err}") from err
        text = reply.text if isinstance(reply, BaseMessage) else str(reply)
        usage = getattr(reply, "usage_metadata", None) or {}
        prompt = usage.get("input_tokens") or sum(self._count(m.content) for m in messages)
        completion = usage.get("output_tokens") or self._count(text)
        return Completion(self.model, (Choice(0, text, "stop"),), prompt, completion)

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        return await self.chat([ChatMessage("user", prompt)], params)

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        async for chunk in self.chat_model.astream(to_langchain(messages), stop=self._stop(params)):
            if chunk.text:
                yield StreamDelta(0, chunk.text)
        yield StreamDelta(0, "", "stop")

    async def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        async for delta in self.stream_chat([ChatMessage("user", prompt)], params):
            yield delta

    async def token_logprobs(self, text: str) -> list[TokenLogprob]:
        raise LogprobsUnsupported(
            f"the LangChain chat model {self.model} gives no prompt logprobs; segment by "
            "embedding novelty (MNEME_SEGMENTER=embedding)"
        )

    async def count_tokens(self, text: str) -> int:
        return self._count(text)

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int | None = None,
    ) -> Schema:
        async def generate(conversation: Sequence[ChatMessage]) -> str:
            if on_text is None:
                return (await self.chat(conversation, params)).text
            pieces = Accumulator(on_text)
            async for delta in self.stream_chat(conversation, params):
                pieces.add(delta.text)
            return pieces.text

        tries = self.repairs if repairs is None else repairs
        return await validated(generate, messages, schema, repairs=tries)
