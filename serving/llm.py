"""The LLM boundary: one Protocol, value types shared by every backend.

Everything Mneme writes or reads goes through :class:`LLM`. Two implementations:
``OpenAICompatibleLLM`` (any OpenAI-compatible server: vLLM, Mneme's own, OpenAI) and
``LocalLLM`` (the built-in engine in-process). The core is async; :class:`SyncLLM` is the thin
blocking wrapper for scripts and Streamlit.

What a backend can do beyond the Protocol's methods is data, :class:`Capabilities` (as
simonw/llm's models say ``supports_schema``): callers branch on ``llm.capabilities``, never on a
backend's type or its internals. A backend with ``capabilities.token_ids`` also offers
:class:`TokenLevelLLM` (:func:`takes_token_ids` narrows to it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeGuard, TypeVar

from pydantic import BaseModel

FinishReason = Literal["stop", "length", "cancelled"]
Role = Literal["system", "user", "assistant", "tool"]
Schema = TypeVar("Schema", bound=BaseModel)

OnText = Callable[[str], None]
"""Called with a reply's text so far while it streams."""


def penalty_problems(
    presence_penalty: float, frequency_penalty: float, repetition_penalty: float, min_p: float
) -> list[str]:
    """What is out of range among the anti-repetition knobs (empty when all are valid)."""
    problems = []
    if not -2.0 <= presence_penalty <= 2.0:
        problems.append(f"presence_penalty={presence_penalty} must be in [-2, 2]")
    if not -2.0 <= frequency_penalty <= 2.0:
        problems.append(f"frequency_penalty={frequency_penalty} must be in [-2, 2]")
    if not 0.0 < repetition_penalty <= 10.0:
        problems.append(
            f"repetition_penalty={repetition_penalty} must be in (0, 10] (1 = off, > 1 penalises)"
        )
    if not 0.0 <= min_p <= 1.0:
        problems.append(f"min_p={min_p} must be in [0, 1]")
    return problems


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to sample; the OpenAI request fields of the same names, with the same meaning."""

    max_tokens: int = 256
    """Most tokens to generate per choice."""
    temperature: float = 0.7
    """0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    top_k: int = 0
    """Keep only the k likeliest tokens; 0 = off."""
    n: int = 1
    """Choices to generate for the same prompt."""
    stop: tuple[str, ...] = ()
    """Strings that end a choice (not included in its text)."""
    seed: int | None = None
    """Makes sampling repeatable for the same request."""
    logprobs: int | None = None
    """None = no logprobs; k >= 0 = the chosen token's logprob plus the k likeliest alternatives."""
    min_tokens: int = 0
    """Tokens to generate before the end-of-sequence tokens may end a choice (vLLM's field)."""
    ignore_eos: bool = False
    """Never stop at end-of-sequence tokens; only max_tokens and stop strings end a choice."""
    presence_penalty: float = 0.0
    """In [-2, 2]: subtracted once from the logit of every token already generated (OpenAI's)."""
    frequency_penalty: float = 0.0
    """In [-2, 2]: times how often a token was generated so far, subtracted from its logit."""
    repetition_penalty: float = 1.0
    """In (0, 10]; 1 = off: logits of tokens in the prompt or the output are divided by it when
    positive and multiplied by it when negative (vLLM's field; CTRL, Keskar et al. 2019)."""
    min_p: float = 0.0
    """In [0, 1]: drop tokens less likely than min_p times the likeliest one (vLLM's field)."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_tokens < 1:
            problems.append(f"max_tokens={self.max_tokens} must be at least 1")
        if not 0.0 <= self.temperature <= 2.0:
            problems.append(f"temperature={self.temperature} must be in [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be 0 (off) or positive")
        if not 1 <= self.n <= 64:
            problems.append(f"n={self.n} must be in [1, 64]")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            problems.append(f"logprobs={self.logprobs} must be in [0, 20]")
        if not 0 <= self.min_tokens <= self.max_tokens:
            problems.append(f"min_tokens={self.min_tokens} must be in [0, max_tokens]")
        if any(not s for s in self.stop) or len(self.stop) > 8:
            problems.append("stop must hold at most 8 non-empty strings")
        problems += penalty_problems(
            self.presence_penalty, self.frequency_penalty, self.repetition_penalty, self.min_p
        )
        if problems:
            raise ValueError("; ".join(problems))


GREEDY = SamplingParams(temperature=0.0)


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One token with its log-probability (natural log); None where there is none (first token)."""

    token: str
    logprob: float | None
    top: tuple[tuple[str, float], ...] = ()
    """The likeliest alternatives at this position, best first."""
    token_id: int | None = None
    """The token's id in the model's vocabulary, where the backend reports it."""
    top_ids: tuple[int, ...] = ()
    """Ids of the ``top`` alternatives, same order, where the backend reports them."""


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    model: str
    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        """The first choice's text."""
        return self.choices[0].text


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """A piece of one choice's text as it is generated; the last piece has a finish reason."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do, as data; the defaults are what every backend can."""

    context_tokens: int | None = None
    """Tokens the model takes, prompt and reply together; None when the backend does not say (a
    server: the caller assumes its own default)."""
    token_ids: bool = False
    """Takes prompts as token ids and returns token ids (:class:`TokenLevelLLM`): reranked beams
    continue exactly the tokens they hold, sharing their prompt's KV cache, and a chat's partial
    reply can be continued."""


class LLM(Protocol):
    """What every backend offers. All methods may raise :class:`serving.errors.LLMError`."""

    @property
    def model(self) -> str:
        """The model's name as the backend knows it."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What this backend can do beyond these methods (constant for the backend's life)."""
        ...

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        """Continue raw text."""
        ...

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        """Answer a conversation, formatted with the model's chat template."""
        ...

    def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]: ...

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]: ...

    async def token_logprobs(self, text: str) -> list[TokenLogprob]:
        """Log-probability of every token of ``text`` given the ones before it (surprise = -lp).

        One entry per token of ``text``. The first token's logprob is None unless the backend
        can condition it on a BOS token (the built-in engine does when the model has one).
        Raises :class:`serving.errors.LogprobsUnsupported` where the backend cannot say.
        """
        ...

    async def count_tokens(self, text: str) -> int: ...

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int = 2,
    ) -> Schema:
        """A reply validated against ``schema``: guided decoding where the backend has it,
        otherwise parse and a bounded number of repair attempts
        (:class:`serving.errors.StructuredOutputError` when they run out).

        ``repairs`` is how many times a reply that does not validate is answered with a repair
        request (0: one try; a caller that retries itself, like the writer, passes 0).
        ``on_text``, when given, is called with the reply's raw text so far as it is generated
        (each repair attempt starts again from ""), so a UI can show it streaming."""
        ...


@dataclass(frozen=True, slots=True)
class TokenContinuation:
    """One choice of :meth:`TokenLevelLLM.continue_ids`."""

    token_ids: tuple[int, ...]
    """The new tokens, after the prompt's."""
    stopped: bool
    """The model ended the choice (an end-of-sequence token or a stop string), rather than
    ``max_tokens``."""


class TokenLevelLLM(LLM, Protocol):
    """An :class:`LLM` that takes and returns token ids (``capabilities.token_ids``). All methods
    may raise :class:`serving.errors.LLMError`."""

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of raw text (with the tokenizer's own BOS when ``special``)."""
        ...

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of a conversation under the model's chat template, ready for the reply;
        :class:`serving.errors.RequestRejected` when the model has no chat template."""
        ...

    def check_ids(self, ids: Sequence[int], params: SamplingParams = GREEDY) -> None:
        """Raise :class:`serving.errors.RequestRejected` if the backend cannot serve a prompt of
        ``ids`` with ``params`` (empty, or too long for the context with ``max_tokens`` more)."""
        ...

    async def continue_ids(
        self, ids: Sequence[int], params: SamplingParams = GREEDY
    ) -> tuple[TokenContinuation, ...]:
        """``params.n`` continuations of the prompt ``ids``, in choice order; the ``n`` choices
        share one prefill of the prompt, and concurrent calls are batched together."""
        ...

    def detokenize(self, ids: Sequence[int], stop: Sequence[str] = ()) -> tuple[str, bool]:
        """The text of generated ``ids`` as the backend streams it (special tokens skipped), cut
        before the first of ``stop`` found; and whether a stop string cut it."""
        ...


def takes_token_ids(llm: LLM) -> TypeGuard[TokenLevelLLM]:
    """Whether ``llm`` offers :class:`TokenLevelLLM`, as its capabilities say."""
    return llm.capabilities.token_ids


def json_schema_of(schema: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema sent to backends for ``schema``."""
    return schema.model_json_schema()
