"""The model as the writer calls it: by the writer's prompt style (chat, or continuation for a
base model, switching once the backend says the model has no chat template), and every prompt
fitted into the model's context."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any, Literal

from agents.errors import StepFailed
from agents.story_prompt import Prompt, as_continuation, tail
from agents.writer_config import WriterConfig
from serving.errors import RequestRejected
from serving.llm import LLM, ChatMessage, SamplingParams

log = logging.getLogger(__name__)

_CONTEXT_MARGIN = 48
"""Tokens kept free of a model's context for its chat template and counting differences."""


class StoryModel:
    """The writer's LLM calls: the prose streamed, a structured reply, one short field, each
    within the model's context (``config.context_tokens``, counted by ``count``)."""

    def __init__(self, llm: LLM, config: WriterConfig) -> None:
        self.llm = llm
        self.config = config
        self.style: Literal["chat", "completion"] = (
            "completion" if config.prompt_style == "completion" else "chat"
        )
        """How the model is asked now: ``auto`` starts with chat and moves to completion once
        the backend refuses chat for want of a chat template."""
        self.count: Callable[[str], int] = lambda text: len(text.split())
        """The story memory's token counter (set by each start, adopt and step)."""

    async def stream(self, prose: Prompt, params: SamplingParams) -> AsyncIterator[str]:
        """The prose call's text as it arrives, by the writer's prompt style (``auto`` moves to
        completion once the backend refuses chat for want of a chat template)."""
        if self.style == "chat":
            try:
                async for delta in self.llm.stream_chat(prose.messages, params):
                    if delta.index == 0:
                        yield delta.text
                return
            except RequestRejected as err:
                if self.config.prompt_style != "auto" or "chat template" not in str(err):
                    raise
                log.info("%s has no chat template: writing by continuation", self.llm.model)
                self.style = "completion"
        async for delta in self.llm.stream_complete(as_continuation(prose), params):
            if delta.index == 0:
                yield delta.text

    async def field(self, prompt: str, max_tokens: int) -> str:
        """One line continuing ``prompt`` (a notes field, for a base model), sampled as notes."""
        budget, max_tokens = self.room(max_tokens)
        prompt = tail(prompt, budget, self.count)
        params = replace(self.config.sampling(max_tokens, notes=True), stop=("\n",))
        completion = await self.llm.complete(prompt, params)
        return completion.text.strip()

    async def structured(
        self, messages: Sequence[ChatMessage], schema: type[Any], max_tokens: int
    ) -> Any:
        """A validated reply, or None once the backend says the model has no chat template
        (``auto`` style: the writer moves to completion, and the caller asks field by field)."""
        fitted, max_tokens = self.fit(Prompt(list(messages), {}), max_tokens)
        messages = fitted.messages
        try:
            params = self.config.sampling(max_tokens, notes=True)
            # No repair requests: a retry is a fresh try (see :meth:`NotesWriter.notes`), so no
            # repair text can be echoed into content, and a reply cut at max_tokens costs one
            # call, not three.
            return await self.llm.generate_json(messages, schema, params, repairs=0)
        except RequestRejected as err:
            if self.config.prompt_style != "auto" or "chat template" not in str(err):
                raise
            log.info("%s has no chat template: writing by continuation", self.llm.model)
            self.style = "completion"
            return None

    def room(self, max_tokens: int) -> tuple[int, int]:
        """(tokens a prompt may take, tokens the reply may take) within the model's context."""
        if not self.config.context_tokens:
            return 1 << 30, max_tokens
        room = max(64, self.config.context_tokens - _CONTEXT_MARGIN)
        max_tokens = max(8, min(max_tokens, room // 2))
        return room - max_tokens, max_tokens

    def fit(self, prompt: Prompt, max_tokens: int) -> tuple[Prompt, int]:
        """``prompt`` within the model's context: the user message (and the continuation) lose
        their start when too long (the story's end and the request are at their end)."""
        budget, max_tokens = self.room(max_tokens)
        count = self.count
        *rest, user = prompt.messages
        fixed = sum(count(m.content) for m in rest)
        if fixed + count(user.content) > budget:
            body, _, ask = user.content.rpartition("\n\n")  # the request stays whole
            least = fixed + count(ask) + 16
            if least > budget:  # the reply gives way, down to a few tokens
                room = budget + max_tokens
                max_tokens = room - least
                if max_tokens < 16:
                    raise StepFailed(
                        f"The model's context ({self.config.context_tokens} tokens) is too small "
                        "for the writer's prompts; use a model with at least 1,024 tokens of "
                        "context."
                    )
                budget = least
            user = ChatMessage(
                user.role, f"{tail(body, budget - fixed - count(ask), count)}\n\n{ask}"
            )
        continuation = prompt.continuation
        if continuation and count(continuation) > budget:
            continuation = tail(continuation, budget, count)
        return Prompt([*rest, user], prompt.parts, continuation), max_tokens
