"""The vLLM front end's ``rerank`` middleware, over real HTTP in front of Mneme's own server.

The middleware only speaks the OpenAI API to the server it wraps, so Mneme's server (tiny random
Llama) stands in for vLLM here; tests/serving/vllm/test_vllm_rerank.py runs it inside vLLM.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving.llm import SamplingParams
from serving.local import LocalLLM
from serving.rerank import RerankerPool
from serving.rerank.decoders import Beam
from serving.rerank.rankgen import RankGenReranker
from serving.rerank.reranker import Reranker
from serving.rerank.scorers import scorer_folders
from serving.server.app import ServerConfig, create_app
from serving.vllm.rerank import LoopbackGenerator, RerankMiddleware, Scope
from tests.net import free_port, serving

KEY = "secret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Loads:
    """A scorer factory that counts how often it is called."""

    def __init__(self, reranker: Reranker) -> None:
        self.reranker, self.count = reranker, 0

    def __call__(self) -> Reranker:
        self.count += 1
        return self.reranker


@pytest.fixture(scope="module")
def loads(tiny_rankgen: RankGenReranker) -> Loads:
    return Loads(tiny_rankgen)


@pytest.fixture(scope="module")
def base_url(tiny_llm: LocalLLM, loads: Loads) -> Iterator[str]:
    # the inner server offers no scorer: every reranked reply must come from the middleware
    inner = create_app(tiny_llm, None, ServerConfig(served_model_name="tiny", api_key=KEY))
    pool = RerankerPool({"tiny-rankgen": loads})
    with serving(RerankMiddleware(inner, pool, default_scorer="tiny-rankgen")) as url:
        yield url


def post(
    base_url: str, path: str, body: dict[str, Any], headers: dict[str, str] = AUTH
) -> httpx.Response:
    return httpx.post(
        f"{base_url}{path}", json={"model": "tiny", **body}, headers=headers, timeout=60
    )


def test_beam_search_through_the_middleware(base_url: str, tiny_rankgen: RankGenReranker) -> None:
    rerank = {"method": "beam", "samples": 3, "beam": 2, "step_tokens": 4, "runners_up": 1}
    body = {"prompt": "Once upon a time", "max_tokens": 8, "seed": 5, "rerank": rerank}
    reply = post(base_url, "/v1/completions", body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    (choice,) = data["choices"]
    extension = data["rerank"]
    assert extension["method"] == "beam" and extension["scorer"] == tiny_rankgen.name
    assert extension["steps"] == 2
    assert extension["score"] == pytest.approx(
        tiny_rankgen.score("Once upon a time", [choice["text"]])[0], abs=1e-4
    )
    assert all(r["score"] <= extension["score"] for r in extension["runners_up"])
    assert data["model"] == "tiny" and data["usage"]["prompt_tokens"] > 0
    assert data["usage"]["completion_tokens"] == 6 * 4 + 2 * 3 * 4  # every sampled token
    assert post(base_url, "/v1/completions", body).json()["choices"] == data["choices"]


def test_chat_over_generation_through_the_middleware(base_url: str) -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Tell a story."}]}],
        "max_completion_tokens": 5,
        "rerank": {"method": "sample", "samples": 4, "runners_up": 3},
    }
    data = post(base_url, "/v1/chat/completions", body).json()
    assert data["object"] == "chat.completion"
    assert data["choices"][0]["message"]["role"] == "assistant"
    assert data["usage"]["completion_tokens"] == 4 * 5  # max_completion_tokens was honoured
    scores = [data["rerank"]["score"]] + [r["score"] for r in data["rerank"]["runners_up"]]
    assert scores == sorted(scores, reverse=True)


def test_requests_without_rerank_reach_the_server_untouched(base_url: str) -> None:
    plain = post(base_url, "/v1/completions", {"prompt": "Hi", "max_tokens": 3, "seed": 1})
    assert plain.status_code == 200 and "rerank" not in plain.json()
    with httpx.stream(
        "POST",
        f"{base_url}/v1/completions",
        json={"model": "tiny", "prompt": "Hi", "max_tokens": 3, "seed": 1, "stream": True},
        headers=AUTH,
        timeout=60,
    ) as streamed:
        events = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
    assert "".join(texts) == plain.json()["choices"][0]["text"]
    broken = httpx.post(
        f"{base_url}/v1/completions", content=b"{not json", headers=AUTH, timeout=10
    )
    assert broken.status_code == 400  # the server's own answer to a body that is not JSON


def test_no_key_is_refused_before_any_scorer_loads(base_url: str, loads: Loads) -> None:
    before = loads.count
    body = {"prompt": "Hi", "rerank": {"method": "sample", "samples": 2}}
    reply = post(base_url, "/v1/completions", body, headers={})
    assert reply.status_code == 401, reply.text
    assert loads.count == before


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ({"rerank": {"samples": 0}}, 400, "rerank.samples"),
        ({"rerank": {"sample": 3}}, 400, "rerank.sample: Extra inputs are not permitted"),
        ({"rerank": {}, "stream": True}, 400, "rerank cannot be combined with stream"),
        ({"rerank": {}, "n": 2}, 400, "rerank cannot be combined with n > 1"),
        ({"rerank": {}, "echo": True}, 400, "rerank cannot be combined with echo"),
        ({"rerank": {}, "min_tokens": 2}, 400, "rerank cannot be combined with min_tokens"),
        ({"rerank": {"scorer": "nope"}}, 400, "unknown rerank scorer 'nope'"),
        ({"rerank": {}, "prompt": [1, 2, 3]}, 400, "rerank needs a text prompt"),
        ({"rerank": {}, "model": "other"}, 404, "other"),  # the server's own answer
    ],
)
def test_bad_rerank_requests_get_a_clear_error(
    base_url: str, extra: dict[str, Any], status: int, message: str
) -> None:
    reply = post(base_url, "/v1/completions", {"prompt": "Hi", "max_tokens": 4, **extra})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]["message"]


def test_scorer_folders_are_read_from_one_variable() -> None:
    assert scorer_folders(None) == {}
    assert scorer_folders(" a=/x/a , b=/y/b,") == {"a": "/x/a", "b": "/y/b"}
    with pytest.raises(ValueError, match="'oops' is not name=/path"):
        scorer_folders("a=/x,oops")


def test_a_null_rerank_is_an_ordinary_request(base_url: str) -> None:
    reply = post(base_url, "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "rerank": None})
    assert reply.status_code == 200 and "rerank" not in reply.json()


async def call(
    middleware: RerankMiddleware, body: dict[str, Any], *, port: int, disconnect: bool
) -> list[dict[str, Any]]:
    """Call the middleware with a POST of ``body`` (then a disconnect, or nothing more); what it
    sent back."""
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "headers": [],
        "server": ("127.0.0.1", port),
        "scheme": "http",
    }
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    if disconnect:
        messages.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # nothing more: wait, as a server does
        raise AssertionError

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(middleware(scope, receive, send), timeout=30)
    return sent


async def never_called(scope: Scope, receive: Any, send: Any) -> None:
    raise AssertionError("a rerank request reached the wrapped app")


def test_a_client_that_leaves_stops_the_reranking() -> None:
    cancelled = asyncio.Event()

    class Slow(RerankMiddleware):
        async def rerank(self, scope: Scope, body: dict[str, Any], *, chat: bool) -> Any:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    middleware = Slow(never_called, RerankerPool({}), default_scorer="none")
    body = {"model": "m", "prompt": "x", "rerank": {}}
    assert asyncio.run(call(middleware, body, port=1, disconnect=True)) == []  # nobody to answer
    assert cancelled.is_set()


def test_an_unreachable_own_address_is_a_502() -> None:
    middleware = RerankMiddleware(never_called, RerankerPool({}), default_scorer="none")
    body = {"model": "m", "prompt": "x", "rerank": {"method": "sample"}}
    start, reply = asyncio.run(call(middleware, body, port=free_port(), disconnect=False))
    assert start["status"] == 502
    message = json.loads(reply["body"])["error"]["message"]
    assert "rerank could not sample from this server" in message


def test_the_loopback_is_plain_http_to_the_socket_behind_a_tls_proxy(base_url: str) -> None:
    body = {"prompt": "Hi", "max_tokens": 3, "rerank": {"method": "sample", "samples": 2}}
    reply = httpx.post(
        f"{base_url}/v1/completions",
        json={"model": "tiny", **body},
        headers={**AUTH, "X-Forwarded-Proto": "https"},  # what a local nginx with TLS adds
        timeout=60,
    )
    assert reply.status_code == 200, reply.text


def test_chat_beams_extend_a_reply_the_caller_continues() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "Tell me."},
            {"role": "assistant", "content": [{"type": "text", "text": "Once"}]},
        ],
        "continue_final_message": True,
        "add_generation_prompt": False,
        "echo": True,
        "rerank": {},
    }
    path = "/v1/chat/completions"
    no_client: Any = None  # building a request sends nothing
    generator = LoopbackGenerator(no_client, path, body, chat=True)
    params = SamplingParams(max_tokens=4, n=3)
    sent = generator._request(Beam(text=" upon"), params)
    assert sent["messages"][-1] == {"role": "assistant", "content": "Once upon"}
    assert len(sent["messages"]) == 2 and "echo" not in sent and "rerank" not in sent
    opening = {**body, "messages": body["messages"][:1], "continue_final_message": False}
    fresh = LoopbackGenerator(no_client, path, opening, chat=True)
    sent = fresh._request(Beam(text="Once"), params)
    assert sent["messages"][-1] == {"role": "assistant", "content": "Once"}
    assert sent["continue_final_message"] is True and sent["n"] == 3 and sent["max_tokens"] == 4


def test_candidate_requests_carry_the_callers_sampling_fields() -> None:
    """vLLM applies its own penalties and filters to the candidates: they travel unchanged."""
    sampling = {"top_k": 40, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": 1.0}
    sampling |= {"repetition_penalty": 1.3}
    body = {"model": "m", "prompt": "Once", "rerank": {}, **sampling}
    no_client: Any = None  # building a request sends nothing
    generator = LoopbackGenerator(no_client, "/v1/completions", body, chat=False)
    sent = generator._request(Beam(text=" upon"), SamplingParams(max_tokens=4, n=3))
    assert {k: sent[k] for k in sampling} == sampling and sent["prompt"] == "Once upon"


def test_the_default_scorer_ships_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MNEME_RERANK_SCORER", raising=False)
    assert RerankMiddleware(never_called, RerankerPool({})).default_scorer == "embedder"
    assert "embedder" in RerankerPool.standard().names  # offered without any download
    monkeypatch.setenv("MNEME_RERANK_SCORER", "tiny-rankgen")
    assert RerankMiddleware(never_called, RerankerPool({})).default_scorer == "tiny-rankgen"


def test_the_loopback_address_can_be_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.vllm.rerank import _own_url

    scope: Scope = {"server": ("::1", 8000), "scheme": "https"}
    assert _own_url(scope) == "http://[::1]:8000"  # the socket, never the reported scheme
    monkeypatch.setenv("MNEME_RERANK_LOOPBACK", "https://gpu-box.internal:8443/")
    assert _own_url(scope) == "https://gpu-box.internal:8443"
