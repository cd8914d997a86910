"""OpenAICompatibleLLM against a real HTTP server on 127.0.0.1, scripted per test."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from serving.errors import (
    LLMRequestError,
    LLMUnavailable,
    LogprobsUnsupported,
    StructuredOutputError,
)
from serving.llm import ChatMessage, SamplingParams, StreamDelta, TokenLogprob
from serving.openai_client import (
    GuidedDecoding,
    OpenAIClientConfig,
    OpenAICompatibleLLM,
    align_echo_logprobs,
    align_prompt_logprobs,
)
from serving.tokens import token_counter
from tests.net import free_port

T = TypeVar("T")
MODEL = "test-model"


@dataclass
class Reply:
    """One scripted answer: JSON ``body``, or server-sent ``events`` when given."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[Any] | None = None
    delay_s: float = 0.0


@dataclass
class Seen:
    path: str
    body: dict[str, Any]


class ScriptedServer(ThreadingHTTPServer):
    """Answers each POST path from its queue of replies (the last one repeats); records requests.

    A path with no script answers 404 like a server without that route.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: dict[str, deque[Reply]] = defaultdict(deque)
        self.seen: list[Seen] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def on(self, path: str, *replies: Reply) -> None:
        self.script[path].extend(replies)

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        return [seen.body for seen in self.seen if seen.path == path]

    def next_reply(self, path: str, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.seen.append(Seen(path, body))
            queue = self.script.get(path)
            if not queue:
                return Reply(404, {"detail": "Not Found"})
            return queue.popleft() if len(queue) > 1 else queue[0]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout test) is expected; stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedServer

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        reply = self.server.next_reply(self.path, body)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        if reply.events is not None:
            payload = b"".join(
                b"data: " + (e if isinstance(e, str) else json.dumps(e)).encode() + b"\n\n"
                for e in [*reply.events, "[DONE]"]
            )
            content_type = "text/event-stream"
        else:
            payload = json.dumps(reply.body).encode()
            content_type = "application/json"
        self.send_response(reply.status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    scripted = ScriptedServer()
    thread = threading.Thread(target=scripted.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield scripted
    scripted.shutdown()
    scripted.server_close()
    thread.join()


def config(base_url: str, **overrides: Any) -> OpenAIClientConfig:
    fast = {"timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.001, "max_backoff_s": 0.01}
    return OpenAIClientConfig(base_url=base_url, model=MODEL, **(fast | overrides))


def run(settings: OpenAIClientConfig, scenario: Callable[[OpenAICompatibleLLM], Awaitable[T]]) -> T:
    """Run ``scenario`` with a fresh client on a fresh event loop, closing the client after."""

    async def main() -> T:
        async with OpenAICompatibleLLM(settings) as llm:
            return await scenario(llm)

    return asyncio.run(main())


def error_body(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "BadRequestError", "code": 400}}


def completion_body(*texts: str, finish: str = "stop", **extra: Any) -> dict[str, Any]:
    choices = [
        {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
        for i, text in enumerate(texts)
    ]
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": MODEL,
        "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        **extra,
    }


def chat_body(content: str, finish: str = "stop", logprobs: Any = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
                "logprobs": logprobs,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


ASK = [ChatMessage("user", "Say hello.")]


# -- requests and responses ----------------------------------------------------------------


def test_complete_maps_every_sampling_field(server: ScriptedServer) -> None:
    logprobs = {
        "tokens": [" Hi", "!"],
        "token_logprobs": [-0.5, -1.25],
        "top_logprobs": [{" Hi": -0.5, " Hey": -1.0}, {"!": -1.25, ".": -0.75}],
        "text_offset": [0, 3],
    }
    body = completion_body(" Hi!", " Yo", finish="length")
    body["choices"][0]["logprobs"] = logprobs
    server.on("/v1/completions", Reply(body=body))
    params = SamplingParams(
        max_tokens=7, temperature=0.5, top_p=0.9, top_k=40, n=2, stop=("\n",), seed=3, logprobs=2
    )
    completion = run(config(server.base_url), lambda llm: llm.complete("Say", params))

    [sent] = server.requests_to("/v1/completions")
    assert sent == {
        "model": MODEL,
        "prompt": "Say",
        "stream": False,
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "n": 2,
        "stop": ["\n"],
        "seed": 3,
        "logprobs": 2,
    }
    assert completion.text == " Hi!"
    assert [choice.text for choice in completion.choices] == [" Hi!", " Yo"]
    assert completion.choices[0].finish_reason == "length"
    assert (completion.prompt_tokens, completion.completion_tokens) == (5, 2)
    assert completion.choices[0].logprobs == (
        TokenLogprob(" Hi", -0.5, ((" Hi", -0.5), (" Hey", -1.0))),
        TokenLogprob("!", -1.25, ((".", -0.75), ("!", -1.25))),
    )
    assert completion.choices[1].logprobs is None


def test_penalties_and_min_p_are_sent_only_when_set(server: ScriptedServer) -> None:
    """OpenAI's penalties at the top level; vLLM's repetition_penalty and min_p as extra fields
    (unchanged, so vLLM applies them as given); defaults are left out (OpenAI rejects the
    extras)."""
    server.on("/v1/completions", Reply(body=completion_body("Hi")))
    server.on("/v1/chat/completions", Reply(body=chat_body("Hi")))
    params = SamplingParams(
        presence_penalty=-0.5, frequency_penalty=1.25, repetition_penalty=1.3, min_p=0.05
    )
    run(config(server.base_url), lambda llm: llm.complete("Say", params))
    run(config(server.base_url), lambda llm: llm.chat(ASK, params))
    chat_only = SamplingParams(repetition_penalty=0.9)  # below 1 is sent too: it favours repeats
    run(config(server.base_url), lambda llm: llm.chat(ASK, chat_only))
    run(config(server.base_url), lambda llm: llm.chat(ASK, SamplingParams()))

    sent = server.requests_to("/v1/completions") + server.requests_to("/v1/chat/completions")
    fields = ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_p")
    expected = {"presence_penalty": -0.5, "frequency_penalty": 1.25}
    expected |= {"repetition_penalty": 1.3, "min_p": 0.05}
    assert [{k: body[k] for k in fields if k in body} for body in sent] == [
        expected,
        expected,
        {"repetition_penalty": 0.9},
        {},
    ]


def test_chat_sends_messages_and_chat_style_logprobs(server: ScriptedServer) -> None:
    logprobs = {
        "content": [
            {
                "token": "Hello",
                "logprob": -0.1,
                "bytes": None,
                "top_logprobs": [{"token": "Hello", "logprob": -0.1, "bytes": None}],
            }
        ]
    }
    server.on("/v1/chat/completions", Reply(body=chat_body("Hello", logprobs=logprobs)))
    messages = [ChatMessage("system", "Be brief."), *ASK]
    completion = run(
        config(server.base_url), lambda llm: llm.chat(messages, SamplingParams(logprobs=1))
    )

    [sent] = server.requests_to("/v1/chat/completions")
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
    ]
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 1)
    assert "top_k" not in sent and "seed" not in sent and "stop" not in sent
    assert completion.text == "Hello"
    assert completion.choices[0].logprobs == (TokenLogprob("Hello", -0.1, (("Hello", -0.1),)),)
    assert completion.prompt_tokens == 9


def test_stream_chat_yields_deltas_in_order_with_the_finish_reason(
    server: ScriptedServer,
) -> None:
    def chunk(index: int, content: str | None, finish: str | None = None) -> dict[str, Any]:
        delta = {"role": "assistant"} if content is None else {"content": content}
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
        }

    events = [
        chunk(0, None),
        chunk(0, "Hel"),
        chunk(1, "Yo"),
        chunk(0, "lo"),
        chunk(1, "", "length"),
        chunk(0, "", "stop"),
    ]
    server.on("/v1/chat/completions", Reply(events=events))

    async def collect(llm: OpenAICompatibleLLM) -> list[StreamDelta]:
        return [delta async for delta in llm.stream_chat(ASK, SamplingParams(n=2))]

    deltas = run(config(server.base_url), collect)
    assert deltas == [
        StreamDelta(0, "Hel"),
        StreamDelta(1, "Yo"),
        StreamDelta(0, "lo"),
        StreamDelta(1, "", "length"),
        StreamDelta(0, "", "stop"),
    ]
    assert server.requests_to("/v1/chat/completions")[0]["stream"] is True


def test_stream_complete_yields_text_deltas(server: ScriptedServer) -> None:
    events = [
        {**completion_body("Once"), "choices": [{"index": 0, "text": "Once", "logprobs": None}]},
        completion_body(" upon", finish="length"),
    ]
    server.on("/v1/completions", Reply(events=events))

    async def collect(llm: OpenAICompatibleLLM) -> list[StreamDelta]:
        return [delta async for delta in llm.stream_complete("Tell")]

    assert run(config(server.base_url), collect) == [
        StreamDelta(0, "Once"),
        StreamDelta(0, " upon", "length"),
    ]


# -- retries and errors ---------------------------------------------------------------------


def test_429_with_retry_after_is_honoured_then_succeeds(server: ScriptedServer) -> None:
    server.on(
        "/v1/completions",
        Reply(429, error_body("slow down"), headers={"Retry-After": "0.3"}),
        Reply(body=completion_body("ok")),
    )
    started = time.monotonic()
    completion = run(config(server.base_url, max_backoff_s=5.0), lambda llm: llm.complete("x"))
    assert completion.text == "ok"
    assert len(server.requests_to("/v1/completions")) == 2
    assert time.monotonic() - started >= 0.3


def test_retry_after_is_capped_by_max_backoff(server: ScriptedServer) -> None:
    server.on(
        "/v1/completions",
        Reply(429, error_body("slow down"), headers={"Retry-After": "120"}),
        Reply(body=completion_body("ok")),
    )
    started = time.monotonic()
    run(config(server.base_url, max_backoff_s=0.05), lambda llm: llm.complete("x"))
    assert time.monotonic() - started < 5


def test_503_twice_then_success(server: ScriptedServer) -> None:
    server.on(
        "/v1/chat/completions",
        Reply(503, error_body("loading")),
        Reply(503, error_body("loading")),
        Reply(body=chat_body("back")),
    )
    assert run(config(server.base_url), lambda llm: llm.chat(ASK)).text == "back"
    assert len(server.requests_to("/v1/chat/completions")) == 3


@pytest.mark.parametrize("max_retries", [0, 3])
def test_always_500_gives_up_after_max_retries_plus_one(
    server: ScriptedServer, max_retries: int
) -> None:
    server.on("/v1/chat/completions", Reply(500, error_body("engine crashed")))
    with pytest.raises(LLMUnavailable) as caught:
        run(config(server.base_url, max_retries=max_retries), lambda llm: llm.chat(ASK))
    assert len(server.requests_to("/v1/chat/completions")) == max_retries + 1
    message = str(caught.value)
    assert server.base_url in message
    assert "HTTP 500: engine crashed" in message
    assert "MNEME_LLM_BASE_URL" in message


def test_a_slow_server_times_out(server: ScriptedServer) -> None:
    server.on("/v1/chat/completions", Reply(body=chat_body("late"), delay_s=1.0))
    with pytest.raises(LLMUnavailable) as caught:
        run(config(server.base_url, timeout_s=0.1, max_retries=1), lambda llm: llm.chat(ASK))
    assert "timed out after 0.1 s" in str(caught.value)
    assert server.base_url in str(caught.value)
    assert len(server.requests_to("/v1/chat/completions")) == 2


def test_connection_refused_names_the_url() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there any more
    with pytest.raises(LLMUnavailable) as caught:
        run(config(base_url, max_retries=1), lambda llm: llm.complete("x"))
    message = str(caught.value)
    assert base_url in message
    assert "connection refused" in message
    assert "2 attempt(s)" in message


def test_400_is_a_request_error_at_once(server: ScriptedServer) -> None:
    server.on("/v1/chat/completions", Reply(400, error_body("max_tokens is too large: 99999")))
    with pytest.raises(LLMRequestError, match="HTTP 400: max_tokens is too large: 99999"):
        run(config(server.base_url), lambda llm: llm.chat(ASK))
    assert len(server.requests_to("/v1/chat/completions")) == 1


def test_an_error_event_mid_stream_is_unavailable(server: ScriptedServer) -> None:
    events = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
        },
        {"error": {"message": "engine died", "code": 500}},
    ]
    server.on("/v1/chat/completions", Reply(events=events))
    received: list[StreamDelta] = []

    async def collect(llm: OpenAICompatibleLLM) -> None:
        async for delta in llm.stream_chat(ASK):
            received.append(delta)

    with pytest.raises(LLMUnavailable, match="engine died"):
        run(config(server.base_url), collect)
    assert received == [StreamDelta(0, "Hel")]
    assert len(server.requests_to("/v1/chat/completions")) == 1


# -- log-probabilities of a text -----------------------------------------------------------


def vllm_entry(token: str, logprob: float, token_id: int = 7) -> dict[str, Any]:
    return {str(token_id): {"logprob": logprob, "rank": 1, "decoded_token": token}}


@pytest.mark.parametrize("bos", [False, True])
def test_token_logprobs_from_vllm_prompt_logprobs(server: ScriptedServer, bos: bool) -> None:
    # Without a BOS the first prompt token ("The") is the None entry; with one, the BOS is.
    entries = [None, vllm_entry("The", -3.0, 464)] if bos else [None]
    entries += [vllm_entry(" cat", -1.5, 3797), vllm_entry(" sat", -0.25, 3332)]
    body = completion_body("!")
    body["choices"][0]["prompt_logprobs"] = entries
    server.on("/v1/completions", Reply(body=body))

    tokens = run(config(server.base_url), lambda llm: llm.token_logprobs("The cat sat"))

    assert tokens == [
        TokenLogprob("The", None, token_id=464 if bos else None),
        TokenLogprob(" cat", -1.5, token_id=3797),
        TokenLogprob(" sat", -0.25, token_id=3332),
    ]
    [sent] = server.requests_to("/v1/completions")
    assert sent["prompt_logprobs"] == 0
    assert sent["max_tokens"] == 1
    assert sent["prompt"] == "The cat sat"


def test_prompt_logprobs_at_the_top_level_are_read_too(server: ScriptedServer) -> None:
    entries = [None, vllm_entry(" b", -2.0)]
    server.on("/v1/completions", Reply(body=completion_body("", prompt_logprobs=entries)))
    tokens = run(config(server.base_url), lambda llm: llm.token_logprobs("a b"))
    assert tokens == [TokenLogprob("a", None), TokenLogprob(" b", -2.0, token_id=7)]


def test_token_logprobs_fall_back_to_echo(server: ScriptedServer) -> None:
    echo = completion_body("<s>The cat")
    echo["choices"][0]["logprobs"] = {
        "tokens": ["<s>", "The", " cat"],
        "token_logprobs": [None, -2.0, -1.0],
        "top_logprobs": None,
        "text_offset": [0, 3, 6],
    }
    server.on(
        "/v1/completions",
        Reply(400, error_body("Unrecognized request argument supplied: prompt_logprobs")),
        Reply(body=echo),
    )

    async def twice(llm: OpenAICompatibleLLM) -> list[list[TokenLogprob]]:
        return [await llm.token_logprobs("The cat"), await llm.token_logprobs("The cat")]

    first, second = run(config(server.base_url), twice)
    assert first == second == [TokenLogprob("The", None), TokenLogprob(" cat", -1.0)]
    sent = server.requests_to("/v1/completions")
    assert "prompt_logprobs" in sent[0]
    assert (sent[1]["echo"], sent[1]["logprobs"], sent[1]["max_tokens"]) == (True, 0, 0)
    assert len(sent) == 3  # the second call went straight to echo


def test_a_server_with_neither_route_says_logprobs_are_unsupported(
    server: ScriptedServer,
) -> None:
    server.on(
        "/v1/completions",
        Reply(body=completion_body("x")),  # prompt_logprobs ignored
        Reply(body=completion_body("The cat x")),  # echo, but no logprobs
    )

    async def twice(llm: OpenAICompatibleLLM) -> None:
        for _ in range(2):
            with pytest.raises(LogprobsUnsupported) as caught:
                await llm.token_logprobs("The cat")
            assert server.base_url in str(caught.value)

    run(config(server.base_url), twice)
    assert len(server.requests_to("/v1/completions")) == 2  # remembered: no third request


def test_an_auth_failure_is_not_mistaken_for_missing_logprobs(server: ScriptedServer) -> None:
    server.on("/v1/completions", Reply(401, error_body("bad key")))
    with pytest.raises(LLMRequestError, match="HTTP 401: bad key"):
        run(config(server.base_url), lambda llm: llm.token_logprobs("The cat"))


def test_align_prompt_logprobs_rules() -> None:
    assert align_prompt_logprobs("ab", [None]) == [TokenLogprob("ab", None)]
    assert align_prompt_logprobs("ab", [None, {"1": {"logprob": "x"}}]) is None
    # decoded pieces that do not spell a suffix: BOS iff text starts with the first piece
    pieces = [None, vllm_entry("h", -1.0, 1), vllm_entry("?", -2.0, 2)]
    assert align_prompt_logprobs("héllo", pieces) == [
        TokenLogprob("h", None, token_id=1),
        TokenLogprob("?", -2.0, token_id=2),
    ]


def test_align_echo_logprobs_rules() -> None:
    # an empty first token is a BOS; a special marker the text itself starts with is not
    assert align_echo_logprobs("Hi", ["", "Hi"], [None, -1.0]) == [TokenLogprob("Hi", None)]
    assert align_echo_logprobs("<s>Hi", ["<s>", "Hi"], [None, -1.0]) == [
        TokenLogprob("<s>", None),
        TokenLogprob("Hi", -1.0),
    ]
    # tokens generated past the text are cut
    assert align_echo_logprobs("Hi", ["<|begin_of_text|>", "Hi", " there"], [None, -1, -2]) == [
        TokenLogprob("Hi", None)
    ]


# -- token counting ------------------------------------------------------------------------


def test_count_tokens_uses_the_servers_tokenize(server: ScriptedServer) -> None:
    server.on("/tokenize", Reply(body={"count": 7, "max_model_len": 2048, "tokens": [1] * 7}))

    async def twice(llm: OpenAICompatibleLLM) -> list[int]:
        return [await llm.count_tokens("a b c"), await llm.count_tokens("a b c")]

    assert run(config(server.base_url), twice) == [7, 7]
    sent = server.requests_to("/tokenize")
    assert len(sent) == 2
    assert sent[0] == {"model": MODEL, "prompt": "a b c", "add_special_tokens": False}
    assert server.requests_to("/v1/tokenize") == []


def test_count_tokens_falls_back_to_tiktoken_without_tokenize(server: ScriptedServer) -> None:
    text = "Mneme remembers everything, even this sentence."

    async def twice(llm: OpenAICompatibleLLM) -> list[int]:
        return [await llm.count_tokens(text), await llm.count_tokens(text)]

    counts = run(config(server.base_url), twice)
    assert counts == [token_counter(MODEL).count(text)] * 2
    assert len(server.requests_to("/tokenize")) == 1  # the 404 is remembered


# -- structured output ---------------------------------------------------------------------


class Greeting(BaseModel):
    greeting: str
    excitement: int


GOOD = '{"greeting": "hello", "excitement": 3}'


def test_generate_json_accepts_fenced_json_with_vllm_guidance(server: ScriptedServer) -> None:
    server.on("/v1/chat/completions", Reply(body=chat_body(f"Here:\n```json\n{GOOD}\n```")))
    greeting = run(config(server.base_url), lambda llm: llm.generate_json(ASK, Greeting))
    assert greeting == Greeting(greeting="hello", excitement=3)
    [sent] = server.requests_to("/v1/chat/completions")
    assert sent["structured_outputs"] == {"json": Greeting.model_json_schema()}
    assert "response_format" not in sent


def test_generate_json_repairs_an_invalid_reply(server: ScriptedServer) -> None:
    server.on(
        "/v1/chat/completions",
        Reply(body=chat_body('{"greeting": "hello", "excitement": "very"}')),
        Reply(body=chat_body(GOOD)),
    )
    greeting = run(
        config(server.base_url, guided_decoding="vllm"),
        lambda llm: llm.generate_json(ASK, Greeting, SamplingParams(n=3)),
    )
    assert greeting.excitement == 3
    first, second = server.requests_to("/v1/chat/completions")
    assert first["n"] == 1
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert "excitement" in second["messages"][2]["content"]


def test_generate_json_gives_up_after_one_plus_repairs_calls(server: ScriptedServer) -> None:
    server.on("/v1/chat/completions", Reply(body=chat_body('{"greeting": "hello"')))
    with pytest.raises(StructuredOutputError, match="Greeting"):
        run(config(server.base_url), lambda llm: llm.generate_json(ASK, Greeting))
    assert len(server.requests_to("/v1/chat/completions")) == 3


STRICT_SCHEMA = {
    "title": "Greeting",
    "type": "object",
    "properties": {
        "greeting": {"title": "Greeting", "type": "string"},
        "excitement": {"title": "Excitement", "type": "integer"},
    },
    "required": ["greeting", "excitement"],
    "additionalProperties": False,  # what OpenAI's strict mode insists on
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "Greeting", "schema": STRICT_SCHEMA, "strict": True},
}


@pytest.mark.parametrize(
    ("mode", "structured_outputs", "response_format"),
    [
        ("vllm", {"json": Greeting.model_json_schema()}, None),
        ("openai", None, RESPONSE_FORMAT),
        ("none", None, None),
    ],
)
def test_guided_decoding_modes_send_their_field(
    server: ScriptedServer,
    mode: GuidedDecoding,
    structured_outputs: dict[str, Any] | None,
    response_format: dict[str, Any] | None,
) -> None:
    server.on("/v1/chat/completions", Reply(body=chat_body(GOOD)))
    run(config(server.base_url, guided_decoding=mode), lambda llm: llm.generate_json(ASK, Greeting))
    [sent] = server.requests_to("/v1/chat/completions")
    assert sent.get("structured_outputs") == structured_outputs
    assert sent.get("response_format") == response_format


def test_auto_falls_back_to_response_format_and_remembers(server: ScriptedServer) -> None:
    server.on(
        "/v1/chat/completions",
        Reply(400, error_body("unknown field structured_outputs")),
        Reply(body=chat_body(GOOD)),
    )

    async def twice(llm: OpenAICompatibleLLM) -> None:
        await llm.generate_json(ASK, Greeting)
        await llm.generate_json(ASK, Greeting)

    run(config(server.base_url), twice)
    sent = server.requests_to("/v1/chat/completions")
    assert "structured_outputs" in sent[0]
    assert ["response_format" in body for body in sent[1:]] == [True, True]
    assert ["structured_outputs" in body for body in sent[1:]] == [False, False]


def test_auto_does_not_switch_off_guidance_for_an_otherwise_bad_request(
    server: ScriptedServer,
) -> None:
    refusal = Reply(400, error_body("prompt is too long"))
    server.on("/v1/chat/completions", refusal, refusal, refusal, Reply(body=chat_body(GOOD)))

    async def bad_then_good(llm: OpenAICompatibleLLM) -> None:
        with pytest.raises(LLMRequestError, match="prompt is too long"):
            await llm.generate_json(ASK, Greeting)
        await llm.generate_json(ASK, Greeting)

    run(config(server.base_url), bad_then_good)
    sent = server.requests_to("/v1/chat/completions")
    assert len(sent) == 4  # vllm, openai, then none: all refused; then vllm again
    assert "structured_outputs" in sent[0] and "response_format" in sent[1]
    assert "structured_outputs" not in sent[2] and "response_format" not in sent[2]
    assert "structured_outputs" in sent[3]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="base_url") as caught:
        OpenAIClientConfig(base_url="localhost:8000", model=MODEL, timeout_s=0, max_retries=-1)
    assert "timeout_s=0" in str(caught.value)
    assert "max_retries=-1" in str(caught.value)
