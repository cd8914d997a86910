"""LocalLLM: the :class:`~serving.llm.LLM` Protocol over the built-in engine, in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from serving.engine.config import EngineConfig
from serving.engine.detokenizer import Detokenizer
from serving.engine.engine import EngineOutput, EngineRequest, PromptResult, TorchEngine
from serving.errors import RequestRejected
from serving.llm import (
    GREEDY,
    Capabilities,
    ChatMessage,
    Choice,
    Completion,
    FinishReason,
    OnText,
    SamplingParams,
    Schema,
    StreamDelta,
    TokenContinuation,
    TokenLogprob,
    json_schema_of,
)
from serving.rerank.generation import RerankedGeneration
from serving.structured import Accumulator, validated


@dataclass(frozen=True, slots=True)
class Generation:
    """Everything one engine request produced, assembled."""

    prompt: PromptResult
    choices: tuple[Choice, ...]
    completion_tokens: int


class LocalLLM(RerankedGeneration):
    """The embedded default backend: tokenises, applies the chat template, runs the engine.

    A :class:`~serving.llm.TokenLevelLLM`; it also offers what Mneme's own server
    (serving/server) needs of the engine: :meth:`check`, :meth:`run` and :meth:`stream` of an
    :class:`EngineRequest`, the context and vocabulary sizes, and :meth:`decode`.
    """

    def __init__(self, engine: TorchEngine) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.capabilities = Capabilities(context_tokens=engine.max_context, token_ids=True)

    @classmethod
    def load(cls, config: EngineConfig | None = None) -> LocalLLM:
        """Load the model (the bundled SmolLM2 by default) and start the engine."""
        return cls(TorchEngine(config or EngineConfig()))

    @property
    def model(self) -> str:
        return self.engine.model_name

    @property
    def max_context(self) -> int:
        """Tokens the model takes, prompt and reply together."""
        return self.engine.max_context

    @property
    def vocab_size(self) -> int:
        """Token ids are in [0, vocab_size)."""
        return self.engine.loaded.vocab_size

    def close(self) -> None:
        self.engine.shutdown()

    # ------------------------------------------------------------ tokens

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of raw text (with the tokenizer's own BOS when ``special``)."""
        ids: list[int] = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        return ids

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of a conversation under the model's chat template, ready for the reply."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise RequestRejected(
                f"the model {self.model!r} has no chat template; use completions instead"
            )
        rendered = self.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )
        ids: list[int] = list(rendered["input_ids"])
        return ids

    def decode(self, ids: Sequence[int], *, special: bool = True) -> str:
        """The text of token ids in one piece (special tokens' text kept when ``special``)."""
        text: str = self.tokenizer.decode(list(ids), skip_special_tokens=not special)
        return text

    def detokenize(self, ids: Sequence[int], stop: Sequence[str] = ()) -> tuple[str, bool]:
        """The text of generated ``ids`` as the engine streams it (special tokens skipped; token
        by token, so spacing comes out as in a generation), cut before the first of ``stop``
        found; and whether a stop string cut it."""
        detokenizer = Detokenizer(self.tokenizer, stop)
        text = "".join(detokenizer.add(t) for t in ids if not detokenizer.stopped)
        text += "" if detokenizer.stopped else detokenizer.flush()
        return text, detokenizer.stopped

    async def count_tokens(self, text: str) -> int:
        return len(self.encode(text, special=False))

    # ------------------------------------------------------------ generation

    def check(self, spec: EngineRequest) -> None:
        """Raise :class:`RequestRejected` if the engine cannot serve ``spec`` as asked (an empty
        or too long prompt, a JSON schema it cannot follow)."""
        self.engine.check(spec)

    def check_ids(self, ids: Sequence[int], params: SamplingParams = GREEDY) -> None:
        self.check(EngineRequest(tuple(ids), params))

    async def run(self, spec: EngineRequest) -> Generation:
        """Run a request to the end and assemble its choices."""
        prompt: PromptResult | None = None
        texts: dict[int, list[str]] = {i: [] for i in range(spec.params.n)}
        logprobs: dict[int, list[TokenLogprob]] = {i: [] for i in range(spec.params.n)}
        reasons: dict[int, FinishReason] = {}
        tokens = 0
        async for item in self.engine.generate(spec):
            if isinstance(item, PromptResult):
                prompt = item
                continue
            texts[item.index].append(item.text)
            logprobs[item.index].extend(item.logprobs)
            tokens += len(item.token_ids)
            if item.finish_reason is not None:
                reasons[item.index] = item.finish_reason
        assert prompt is not None, "the engine always reports the prompt first"
        choices = tuple(
            Choice(
                index=i,
                text="".join(texts[i]),
                finish_reason=reasons.get(i, "cancelled"),
                logprobs=tuple(logprobs[i]) if spec.params.logprobs is not None else None,
            )
            for i in range(spec.params.n)
        )
        return Generation(prompt, choices, tokens)

    async def _complete(self, ids: list[int], params: SamplingParams) -> Completion:
        result = await self.run(EngineRequest(tuple(ids), params))
        return Completion(
            self.model, result.choices, result.prompt.prompt_tokens, result.completion_tokens
        )

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        return await self._complete(self.encode(prompt), params)

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        return await self._complete(self.encode_chat(messages), params)

    async def stream(self, spec: EngineRequest) -> AsyncIterator[StreamDelta]:
        """``spec``'s choices piece by piece as the engine makes them (pieces that carry
        nothing are skipped). Leaving the loop early cancels the request and frees its cache."""
        async for item in self.engine.generate(spec):
            if isinstance(item, EngineOutput) and (
                item.text or item.finish_reason or item.logprobs
            ):
                yield StreamDelta(item.index, item.text, item.finish_reason, item.logprobs)

    def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        return self.stream(EngineRequest(tuple(self.encode(prompt)), params))

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        return self.stream(EngineRequest(tuple(self.encode_chat(messages)), params))

    async def continue_ids(
        self, ids: Sequence[int], params: SamplingParams = GREEDY
    ) -> tuple[TokenContinuation, ...]:
        new: list[list[int]] = [[] for _ in range(params.n)]
        stopped = [False] * params.n
        async for item in self.engine.generate(EngineRequest(tuple(ids), params)):
            if isinstance(item, EngineOutput):
                new[item.index].extend(item.token_ids)
                stopped[item.index] = stopped[item.index] or item.finish_reason == "stop"
        return tuple(
            TokenContinuation(tuple(tokens), ended)
            for tokens, ended in zip(new, stopped, strict=True)
        )

    async def token_logprobs(self, text: str) -> list[TokenLogprob]:
        """Per-token logprobs of ``text``, tokenised the way a server tokenises a prompt (with
        the tokenizer's own BOS, if it adds one, so the first text token is scored given BOS;
        without one it has ``logprob=None``). Only the text's tokens are returned."""
        plain = self.encode(text, special=False)
        if not plain:
            return []
        ids = self.encode(text)
        extra = len(ids) - len(plain)
        if extra < 0 or ids[extra:] != plain:  # the tokenizer does more than prepend: ignore it
            ids, extra = plain, 0
        spec = EngineRequest(
            tuple(ids), SamplingParams(max_tokens=1, temperature=0.0), prompt_logprobs=0
        )
        result = await self.run(spec)
        return list((result.prompt.prompt_logprobs or ())[extra:])

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int = 2,
    ) -> Schema:
        """Grammar-guided JSON, then validated (a reply cut by max_tokens is repaired)."""
        json_schema = json_schema_of(schema)

        async def guided(conversation: Sequence[ChatMessage]) -> str:
            spec = EngineRequest(
                tuple(self.encode_chat(conversation)), params, json_schema=json_schema
            )
            if on_text is None:
                return (await self.run(spec)).choices[0].text
            reply = Accumulator(on_text)
            async for delta in self.stream(spec):
                if delta.index == 0:
                    reply.add(delta.text)
            return reply.text

        return await validated(guided, messages, schema, repairs=repairs)
