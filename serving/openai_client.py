"""``OpenAICompatibleLLM``: the :class:`serving.llm.LLM` Protocol over any OpenAI-compatible server
(vLLM, Mneme's own server, OpenAI itself) through the official ``openai`` SDK's ``AsyncOpenAI``.

There is one retry policy, this module's: the SDK's own retries are off. 429, 5xx, connection
errors and timeouts are retried with exponential backoff and jitter (a ``Retry-After`` header wins,
capped), then :class:`LLMUnavailable` names the URL and the last cause. Any other 4xx is
:class:`LLMRequestError` at once, with the server's message.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import openai
from openai import AsyncOpenAI, AsyncStream, omit
from openai.lib import type_to_response_format_param
from openai.types import Completion as WireCompletion
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionTokenLogprob
from openai.types.completion_choice import Logprobs as WireLogprobs
from pydantic import BaseModel

from serving.errors import LLMError, LLMRequestError, LLMUnavailable, LogprobsUnsupported
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
    TokenLogprob,
    json_schema_of,
)
from serving.rerank.generation import RerankedGeneration
from serving.structured import Accumulator, validated
from serving.tokens import TokenCounter, token_counter

log = logging.getLogger(__name__)

T = TypeVar("T")
GuidedDecoding = Literal["auto", "vllm", "openai", "none"]
_Guide = Literal["vllm", "openai", "none"]
_LogprobsRoute = Literal["prompt_logprobs", "echo"]

UNSUPPORTED_STATUSES = frozenset({400, 404, 405, 422})
"""4xx answers to a logprobs or tokenize request that mean "this server does not offer it"."""
_SPECIAL_TOKEN = re.compile(r"<\|?[^\s<>]+\|?>|\[[A-Z]+\]")
_SCHEMA_NAME = re.compile(r"[^a-zA-Z0-9_-]")
"""Characters OpenAI does not allow in a response format's name."""


@dataclass(frozen=True, slots=True)
class OpenAIClientConfig:
    base_url: str
    """The server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1 (MNEME_LLM_BASE_URL)."""
    model: str
    """The served model's name, sent with every request (MNEME_LLM_MODEL)."""
    api_key: str | None = None
    """Bearer token; None sends "EMPTY" (the dummy key vLLM accepts without --api-key)."""
    timeout_s: float = 60.0
    """Seconds before one HTTP attempt is abandoned (connect, read and write each)."""
    max_retries: int = 3
    """Extra attempts after a 429, 5xx, connection error or timeout; 0 = one attempt only."""
    backoff_s: float = 0.5
    """Seconds before the first retry; doubles per retry, times a random factor in [0.5, 1]."""
    max_backoff_s: float = 8.0
    """Most seconds between two attempts, a server's Retry-After included."""
    guided_decoding: GuidedDecoding = "auto"
    """generate_json's constraint: vLLM's structured_outputs, OpenAI's response_format, none, or
    auto (the first of those the server accepts, remembered per client)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.base_url.startswith(("http://", "https://")):
            problems.append(f"base_url={self.base_url!r} must start with http:// or https://")
        if not self.model:
            problems.append("model must name the served model")
        if self.timeout_s <= 0:
            problems.append(f"timeout_s={self.timeout_s} must be positive")
        if self.max_retries < 0:
            problems.append(f"max_retries={self.max_retries} must be 0 or more")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            problems.append("backoff_s and max_backoff_s must be 0 or more")
        if self.guided_decoding not in ("auto", "vllm", "openai", "none"):
            problems.append(
                f"guided_decoding={self.guided_decoding!r} must be auto, vllm, openai or none"
            )
        if problems:
            raise ValueError("; ".join(problems))


class OpenAICompatibleLLM(RerankedGeneration):
    """An :class:`serving.llm.LLM` backed by an OpenAI-compatible HTTP server.

    Learns, per instance, what the server offers (guided decoding flavour, prompt logprobs or
    echo, ``/tokenize``) on first use. Close it with :meth:`aclose` or ``async with``.
    """

    def __init__(self, config: OpenAIClientConfig) -> None:
        self.config = config
        # A server says neither its context (MNEME_LLM_CONTEXT_TOKENS does) nor takes token ids.
        self.capabilities = Capabilities()
        self._client = AsyncOpenAI(
            api_key=config.api_key or "EMPTY",
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=0,  # one retry policy: _call's
        )
        self._random = random.Random()
        self._guide: _Guide = "vllm" if config.guided_decoding == "auto" else config.guided_decoding
        self._logprobs_route: _LogprobsRoute | None = None
        self._logprobs_unsupported: str | None = None
        self._tokenize_works: bool | None = None
        self._local_counter: TokenCounter | None = None
        root = config.base_url.rstrip("/")
        self._tokenize_url = f"{root.removesuffix('/v1')}/tokenize"

    @property
    def model(self) -> str:
        return self.config.model

    async def aclose(self) -> None:
        """Close the HTTP connections; the client is unusable afterwards."""
        await self._client.close()

    async def __aenter__(self) -> OpenAICompatibleLLM:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- generation -------------------------------------------------------------------------

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        arguments = self._completion_arguments(params)
        response = await self._call(
            "POST /completions",
            lambda: self._client.completions.create(prompt=prompt, stream=False, **arguments),
        )
        return self._completion_of(response, "POST /completions")

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        return await self._chat(messages, params)

    async def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        """Deltas per choice index as the server sends them; a broken stream raises
        :class:`LLMUnavailable` (it is not retried once text has arrived)."""
        arguments = self._completion_arguments(params)
        stream = await self._call(
            "POST /completions",
            lambda: self._client.completions.create(prompt=prompt, stream=True, **arguments),
        )
        async for chunk in self._relay(stream, "POST /completions"):
            for choice in chunk.choices:
                delta = StreamDelta(
                    index=choice.index,
                    text=choice.text or "",
                    finish_reason=_finish_reason(choice.finish_reason),
                    logprobs=_completion_logprobs(choice.logprobs) or (),
                )
                if delta.text or delta.finish_reason or delta.logprobs:
                    yield delta

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        """Deltas per choice index as the server sends them; a broken stream raises
        :class:`LLMUnavailable` (it is not retried once text has arrived)."""
        arguments = self._chat_arguments(messages, params)
        stream = await self._call(
            "POST /chat/completions",
            lambda: self._client.chat.completions.create(stream=True, **arguments),
        )
        async for chunk in self._relay(stream, "POST /chat/completions"):
            for choice in chunk.choices:
                delta = StreamDelta(
                    index=choice.index,
                    text=choice.delta.content or "",
                    finish_reason=_finish_reason(choice.finish_reason),
                    logprobs=_chat_logprobs(choice.logprobs.content if choice.logprobs else None)
                    or (),
                )
                if delta.text or delta.finish_reason or delta.logprobs:
                    yield delta

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int = 2,
    ) -> Schema:
        """One choice, constrained by the server's guided decoding (see
        :attr:`OpenAIClientConfig.guided_decoding`) and always validated through
        :func:`serving.structured.validated` (3 attempts at most); streamed to ``on_text``."""
        params = replace(params, n=1)
        guidance: dict[_Guide, dict[str, Any]] = {
            "vllm": {"extra_body": {"structured_outputs": {"json": json_schema_of(schema)}}},
            "openai": {"response_format": _strict_response_format(schema)},
            "none": {},
        }

        async def generate(conversation: Sequence[ChatMessage]) -> str:
            return (await self._guided_chat(conversation, params, guidance, on_text)).text

        return await validated(generate, messages, schema, repairs=repairs)

    async def _guided_chat(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        guidance: Mapping[_Guide, Mapping[str, Any]],
        on_text: OnText | None = None,
    ) -> Completion:
        """In auto mode a 4xx moves on to the next guide (vllm → openai → none); the move is
        remembered only once a request with the later guide succeeds, so a request that is bad
        for other reasons (prompt too long) does not switch guided decoding off."""
        order: tuple[_Guide, ...] = ("vllm", "openai", "none")
        guides = (
            order[order.index(self._guide) :]
            if self.config.guided_decoding == "auto"
            else (self._guide,)
        )
        for guide in guides[:-1]:
            try:
                completion = await self._chat(messages, params, guidance[guide], on_text)
            except LLMRequestError as err:
                log.info(
                    "%s refused guide %r (%s); trying the next", self.config.base_url, guide, err
                )
                continue
            self._guide = guide
            return completion
        completion = await self._chat(messages, params, guidance[guides[-1]], on_text)
        self._guide = guides[-1]
        return completion

    async def _chat(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        guidance: Mapping[str, Any] | None = None,
        on_text: OnText | None = None,
    ) -> Completion:
        """A chat completion; ``guidance`` adds request fields (``extra_body`` is merged).
        With ``on_text`` the first choice streams to it (a refused request still raises before
        any text, so the guide fallback above works the same)."""
        arguments = self._chat_arguments(messages, params)
        for key, value in (guidance or {}).items():
            arguments[key] = {**(arguments[key] or {}), **value} if key == "extra_body" else value
        if on_text is not None:
            return await self._streamed_chat(arguments, on_text)
        response = await self._call(
            "POST /chat/completions",
            lambda: self._client.chat.completions.create(stream=False, **arguments),
        )
        choices = [
            Choice(
                index=choice.index,
                text=choice.message.content or "",
                finish_reason=_finish_reason(choice.finish_reason) or "stop",
                logprobs=_chat_logprobs(choice.logprobs.content if choice.logprobs else None),
            )
            for choice in response.choices
        ]
        return self._assemble("POST /chat/completions", response.model, choices, response.usage)

    async def _streamed_chat(self, arguments: dict[str, Any], on_text: OnText) -> Completion:
        """The first choice of a streamed chat completion, its text reported as it arrives."""
        stream = await self._call(
            "POST /chat/completions",
            lambda: self._client.chat.completions.create(stream=True, **arguments),
        )
        reply, finish, model = Accumulator(on_text), None, self.config.model
        async for chunk in self._relay(stream, "POST /chat/completions"):
            model = chunk.model or model
            for choice in chunk.choices:
                if choice.index == 0:
                    reply.add(choice.delta.content or "")
                    finish = _finish_reason(choice.finish_reason) or finish
        choice = Choice(index=0, text=reply.text, finish_reason=finish or "stop", logprobs=None)
        return self._assemble("POST /chat/completions", model, [choice], None)

    def _sampling_arguments(self, params: SamplingParams) -> dict[str, Any]:
        return {
            "model": self.config.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": params.n,
            "stop": list(params.stop) if params.stop else omit,
            "seed": omit if params.seed is None else params.seed,
            "presence_penalty": params.presence_penalty or omit,
            "frequency_penalty": params.frequency_penalty or omit,
            # vLLM's extra sampling fields; OpenAI rejects unknown fields, so only when set.
            "extra_body": {
                name: value
                for name, value, off in (
                    ("top_k", params.top_k, 0),
                    ("min_tokens", params.min_tokens, 0),
                    ("ignore_eos", params.ignore_eos, False),
                    ("repetition_penalty", params.repetition_penalty, 1.0),
                    ("min_p", params.min_p, 0.0),
                )
                if value != off
            }
            or None,
        }

    def _completion_arguments(self, params: SamplingParams) -> dict[str, Any]:
        return {
            **self._sampling_arguments(params),
            "logprobs": omit if params.logprobs is None else params.logprobs,
        }

    def _chat_arguments(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> dict[str, Any]:
        wire = [{"role": message.role, "content": message.content} for message in messages]
        arguments = {
            **self._sampling_arguments(params),
            "messages": cast(list[ChatCompletionMessageParam], wire),
        }
        if params.logprobs is not None:
            arguments |= {"logprobs": True, "top_logprobs": params.logprobs}
        return arguments

    def _completion_of(self, response: WireCompletion, what: str) -> Completion:
        choices = [
            Choice(
                index=choice.index,
                text=choice.text or "",
                finish_reason=_finish_reason(choice.finish_reason) or "stop",
                logprobs=_completion_logprobs(choice.logprobs),
            )
            for choice in response.choices
        ]
        return self._assemble(what, response.model, choices, response.usage)

    def _assemble(
        self, what: str, model: str, choices: list[Choice], usage: CompletionUsage | None
    ) -> Completion:
        """Choices in index order; :class:`LLMError` when the server sent none."""
        if not choices:
            raise LLMError(f"{self.config.base_url} answered {what} with no choices")
        return Completion(
            model=model,
            choices=tuple(sorted(choices, key=lambda choice: choice.index)),
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    # -- log-probabilities of a given text --------------------------------------------------

    async def token_logprobs(self, text: str) -> list[TokenLogprob]:
        """One :class:`TokenLogprob` per token of ``text``; the first has ``logprob=None``.

        Asks vLLM's ``prompt_logprobs`` first, then the legacy ``echo=True, logprobs=0``, and
        remembers which answered. A leading BOS token the server added is dropped, so the tokens
        spell ``text`` (see :func:`align_prompt_logprobs`, :func:`align_echo_logprobs`); the first
        remaining token gets ``logprob=None`` even if the server scored it after the BOS, so the
        result does not depend on whether the tokenizer adds one. Raises
        :class:`LogprobsUnsupported` naming the URL when neither route yields per-token values.
        """
        if not text:
            return []
        if self._logprobs_unsupported is not None:
            raise LogprobsUnsupported(self._logprobs_unsupported)
        routes: tuple[_LogprobsRoute, ...] = (
            (self._logprobs_route,) if self._logprobs_route else ("prompt_logprobs", "echo")
        )
        reasons = []
        for route in routes:
            try:
                tokens = await (
                    self._prompt_logprobs(text)
                    if route == "prompt_logprobs"
                    else self._echo_logprobs(text)
                )
            except LLMRequestError as err:
                if _status_of(err) not in UNSUPPORTED_STATUSES:
                    raise
                reasons.append(f"{route}: {err}")
                continue
            if tokens is None:
                reasons.append(f"{route}: the answer holds no per-token logprobs")
                continue
            self._logprobs_route = route
            return tokens
        self._logprobs_unsupported = (
            f"{self.config.base_url} gives no log-probabilities of a given text "
            f"({'; '.join(reasons)}); serve the model with vLLM for surprise-based segmentation, "
            "or let segmentation fall back to embedding novelty"
        )
        raise LogprobsUnsupported(self._logprobs_unsupported)

    async def _prompt_logprobs(self, text: str) -> list[TokenLogprob] | None:
        response = await self._call(
            "POST /completions (prompt_logprobs)",
            lambda: self._client.completions.create(
                model=self.config.model,
                prompt=text,
                max_tokens=1,
                temperature=0.0,
                stream=False,
                extra_body={"prompt_logprobs": 0},
            ),
        )
        # Not in the SDK's types, so read as an extra field: vLLM puts it on the choice, Mneme's
        # own server (serving/server) on the response.
        entries = (
            getattr(response.choices[0], "prompt_logprobs", None) if response.choices else None
        )
        if entries is None:
            entries = getattr(response, "prompt_logprobs", None)
        if not isinstance(entries, list) or not entries:
            return None
        return align_prompt_logprobs(text, entries)

    async def _echo_logprobs(self, text: str) -> list[TokenLogprob] | None:
        response = await self._call(
            "POST /completions (echo)",
            lambda: self._client.completions.create(
                model=self.config.model,
                prompt=text,
                echo=True,
                logprobs=0,
                max_tokens=0,
                temperature=0.0,
                stream=False,
            ),
        )
        logprobs = response.choices[0].logprobs if response.choices else None
        if logprobs is None or not logprobs.tokens or logprobs.token_logprobs is None:
            return None
        return align_echo_logprobs(text, logprobs.tokens, list(logprobs.token_logprobs))

    # -- token counting ---------------------------------------------------------------------

    async def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by the served model's tokenizer (vLLM's ``/tokenize``, without
        special tokens) where the server has it, else :func:`serving.tokens.token_counter`.

        Whether ``/tokenize`` exists is learnt once (any 4xx or a malformed answer: never asked
        again). It is asked once per call, without retries; when it cannot be reached the local
        count answers for that call.
        """
        if self._tokenize_works is not False:
            count = await self._server_count(text)
            if count is not None:
                return count
        return await asyncio.to_thread(self._count_locally, text)

    async def _server_count(self, text: str) -> int | None:
        body = {"model": self.config.model, "prompt": text, "add_special_tokens": False}
        try:
            answer = await self._call(
                "POST /tokenize",
                lambda: self._client.post(self._tokenize_url, cast_to=object, body=body),
                attempts=1,
            )
        except LLMRequestError:
            self._tokenize_works = False
            return None
        except LLMUnavailable as err:
            log.warning("%s; counting tokens locally", err)
            return None
        count = answer.get("count") if isinstance(answer, dict) else None
        if not isinstance(count, int):
            self._tokenize_works = False
            return None
        self._tokenize_works = True
        return count

    def _count_locally(self, text: str) -> int:
        if self._local_counter is None:
            self._local_counter = token_counter(self.config.model)
        return self._local_counter.count(text)

    # -- transport --------------------------------------------------------------------------

    async def _call(
        self, what: str, request: Callable[[], Awaitable[T]], *, attempts: int | None = None
    ) -> T:
        """``request()``, retried on 429, 5xx, connection errors and timeouts.

        Raises :class:`LLMRequestError` at once on any other 4xx, and :class:`LLMUnavailable`
        naming the URL and the last cause when ``attempts`` (default ``max_retries + 1``) run out.
        """
        attempts = self.config.max_retries + 1 if attempts is None else attempts
        url = self.config.base_url
        cause = "no attempt made"
        failure: openai.APIError | None = None
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            try:
                return await request()
            except openai.APIStatusError as err:
                status = err.status_code
                if status != 429 and status < 500:
                    raise LLMRequestError(
                        f"{url} refused {what}: HTTP {status}: {_server_message(err)}"
                    ) from err
                cause, failure = f"HTTP {status}: {_server_message(err)}", err
                wait = _retry_after_s(err.response.headers)
            except openai.APITimeoutError as err:
                cause, failure = f"timed out after {self.config.timeout_s:g} s", err
            except openai.APIConnectionError as err:
                cause, failure = _connection_cause(err), err
            if attempt < attempts:
                delay = self._delay(attempt, wait)
                log.warning(
                    "%s %s failed (%s); retry %d of %d in %.2f s",
                    url,
                    what,
                    cause,
                    attempt,
                    attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
        raise LLMUnavailable(
            f"{url} did not answer {what} after {attempts} attempt(s); last cause: {cause}. "
            "Check that the server is running and that MNEME_LLM_BASE_URL points at it."
        ) from failure

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        """Seconds before attempt ``attempt + 1``: the server's Retry-After, else exponential
        backoff times a random factor in [0.5, 1]; never more than ``max_backoff_s``."""
        if retry_after_s is not None:
            return min(retry_after_s, self.config.max_backoff_s)
        backoff = min(self.config.backoff_s * 2.0 ** (attempt - 1), self.config.max_backoff_s)
        return backoff * self._random.uniform(0.5, 1.0)

    async def _relay(self, stream: AsyncStream[T], what: str) -> AsyncIterator[T]:
        """The stream's chunks; closes the response however iteration ends."""
        async with stream:
            try:
                async for chunk in stream:
                    yield chunk
            except openai.APITimeoutError as err:
                raise LLMUnavailable(
                    f"{self.config.base_url} stopped sending {what} mid-stream: timed out after "
                    f"{self.config.timeout_s:g} s; check the server"
                ) from err
            except openai.APIError as err:
                cause = (
                    _connection_cause(err)
                    if isinstance(err, openai.APIConnectionError)
                    else err.message
                )
                raise LLMUnavailable(
                    f"{self.config.base_url} broke off {what} mid-stream: {cause}; check the server"
                ) from err


def align_prompt_logprobs(text: str, entries: list[Any]) -> list[TokenLogprob] | None:
    """vLLM's ``prompt_logprobs`` (first entry None, then one ``{token_id: {"logprob", "rank",
    "decoded_token"}}`` per prompt token) as tokens spelling ``text``; None when malformed.

    The first entry carries no text. When the later tokens already spell all of ``text``, the
    first token was a BOS the server added and is dropped; otherwise the first token is the part of
    ``text`` they leave over. If they do not spell a suffix of ``text`` (odd detokenisation), the
    first token counts as a BOS when ``text`` starts with the second token's text, else it is kept
    with empty text.
    """
    scored: list[TokenLogprob] = []
    for entry in entries[1:]:
        if not isinstance(entry, Mapping) or not entry:
            return None
        key, best = next(iter(entry.items()))  # with prompt_logprobs=0, the prompt token alone
        if not isinstance(best, Mapping) or not isinstance(best.get("logprob"), int | float):
            return None
        token_id = int(key) if str(key).isdigit() else None
        piece = str(best.get("decoded_token") or "")
        scored.append(TokenLogprob(piece, float(best["logprob"]), token_id=token_id))
    rest = "".join(token.token for token in scored)
    if text.endswith(rest):
        head = text[: len(text) - len(rest)]
        is_bos = head == ""
    else:
        head = ""
        is_bos = bool(scored) and text.startswith(scored[0].token)
    tokens = scored if is_bos else [TokenLogprob(head, None), *scored]
    if tokens:
        tokens[0] = replace(tokens[0], logprob=None)
    return tokens


def align_echo_logprobs(
    text: str, tokens: Sequence[str], values: Sequence[float | None]
) -> list[TokenLogprob]:
    """The legacy echo shape (parallel token and logprob lists, prompt first) as tokens spelling
    ``text``.

    A first token is a BOS, and dropped, when its text is empty, or a special-token marker
    (``<s>``, ``<|begin_of_text|>``, ``[CLS]``) that ``text`` does not start with. Tokens past
    ``text`` (a server that generated despite ``max_tokens=0``) are cut.
    """
    pairs = list(zip(tokens, values, strict=False))
    if pairs and (
        pairs[0][0] == ""
        or (_SPECIAL_TOKEN.fullmatch(pairs[0][0]) and not text.startswith(pairs[0][0]))
    ):
        pairs = pairs[1:]
    kept: list[TokenLogprob] = []
    covered = 0
    for token, value in pairs:
        if covered >= len(text):
            break
        kept.append(TokenLogprob(token, None if not kept else value))
        covered += len(token)
    return kept


def _strict_response_format(schema: type[BaseModel]) -> dict[str, Any]:
    """OpenAI's ``json_schema`` response format with ``strict: true``. The SDK rewrites pydantic's
    schema to strict mode's rules (every property required, no additional properties), which
    OpenAI insists on and which still validates with pydantic."""
    response_format = cast(dict[str, Any], type_to_response_format_param(schema))
    name = _SCHEMA_NAME.sub("_", schema.__name__)[:64]
    return {**response_format, "json_schema": {**response_format["json_schema"], "name": name}}


def _finish_reason(reason: str | None) -> FinishReason | None:
    if not reason:
        return None
    if reason == "length":
        return "length"
    if reason in ("abort", "cancelled"):
        return "cancelled"
    return "stop"  # stop, eos, tool_calls, content_filter: the model ended the choice


def _top(alternatives: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    if not alternatives:
        return ()
    return tuple(sorted(alternatives.items(), key=lambda item: -item[1]))


def _completion_logprobs(logprobs: WireLogprobs | None) -> tuple[TokenLogprob, ...] | None:
    if logprobs is None or logprobs.tokens is None:
        return None
    values: Sequence[float | None] = logprobs.token_logprobs or []
    tops = logprobs.top_logprobs or []
    return tuple(
        TokenLogprob(
            token,
            values[position] if position < len(values) else None,
            _top(tops[position] if position < len(tops) else None),
        )
        for position, token in enumerate(logprobs.tokens)
    )


def _chat_logprobs(
    content: Sequence[ChatCompletionTokenLogprob] | None,
) -> tuple[TokenLogprob, ...] | None:
    if content is None:
        return None
    return tuple(
        TokenLogprob(
            item.token,
            item.logprob,
            _top({top.token: top.logprob for top in item.top_logprobs or []}),
        )
        for item in content
    )


def _server_message(err: openai.APIStatusError) -> str:
    """The message the server put in its error body (OpenAI, vLLM or FastAPI shape), shortened."""
    body = err.body
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message") or error.get("detail") or error
    message = str(error).strip() if error else ""
    message = message or err.response.reason_phrase or "no message"
    return message if len(message) <= 300 else message[:297] + "..."


def _retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asked us to wait (``retry-after-ms``, or ``Retry-After`` as seconds or
    an HTTP date); None when it did not say or said nonsense."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _connection_cause(err: BaseException) -> str:
    """The cause to report: "connection refused", or the innermost error of the failure."""
    current: BaseException | None = err
    innermost = err
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        seen.add(id(current))
        innermost = current
        current = current.__cause__ or current.__context__
    return f"connection failed ({innermost})"


def _status_of(err: LLMRequestError) -> int | None:
    cause = err.__cause__
    return cause.status_code if isinstance(cause, openai.APIStatusError) else None
