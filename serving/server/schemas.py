"""OpenAI request and response shapes, with vLLM's extras (top_k, min_p, repetition_penalty,
prompt_logprobs, structured_outputs), so one client works against Mneme's server and vLLM alike,
and Mneme's own ``rerank`` extension (see serving/server/reranking.py).

Unknown fields are ignored, as vLLM does; known fields are validated and a bad one is a 400.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.llm import Role, SamplingParams


def error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's errors as one line: ``field.path: problem; ...``."""
    problems = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"] if part != "body")
        problems.append(f"{where or 'body'}: {error['msg']}")
    return "; ".join(problems)


class RerankOptions(BaseModel):
    """Mneme's extension field ``rerank``: RankGen reranking of sampled continuations.

    Unknown keys are an error here (a typo would silently change the decoding otherwise).
    """

    model_config = ConfigDict(extra="forbid")

    method: Literal["sample", "beam"] = "beam"
    scorer: str | None = None
    samples: int = Field(default=10, ge=1, le=64)
    beam: int = Field(default=2, ge=1, le=16)
    step_tokens: int = Field(default=20, ge=1, le=4096)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    runners_up: int = Field(default=0, ge=0, le=64)


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)
    n: int = Field(default=1, ge=1, le=64)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    prompt_logprobs: int | None = Field(default=None, ge=0, le=20)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    structured_outputs: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    rerank: RerankOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if any(not s for s in stops) or len(stops) > 8:
            raise ValueError("stop must be at most 8 non-empty strings")
        return stops

    def sampling(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        if self.max_tokens == 0:
            raise ValueError("max_tokens=0 is only valid with echo=true (scoring a prompt)")
        return SamplingParams(
            max_tokens=self.max_tokens or max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            n=self.n,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            logprobs=logprobs,
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            min_p=self.min_p,
        )

    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema to constrain output to, from vLLM's or OpenAI's field."""
        if self.structured_outputs is not None:
            schema = self.structured_outputs.get("json")
            if not isinstance(schema, dict):
                raise ValueError("structured_outputs supports {'json': <schema object>} here")
            return schema
        if self.response_format is not None:
            kind = self.response_format.get("type")
            if kind == "json_schema":
                inner = self.response_format.get("json_schema") or {}
                schema = inner.get("schema")
                if not isinstance(schema, dict):
                    raise ValueError("response_format.json_schema.schema must be an object")
                return schema
            if kind == "json_object":
                return {"type": "object"}
            if kind != "text":
                raise ValueError(
                    f"response_format type {kind!r} is not text/json_object/json_schema"
                )
        return None


class CompletionRequest(Request):
    prompt: str | list[int]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[int]) -> str | list[int]:
        if len(value) == 0:
            raise ValueError("the prompt is empty")
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Role
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        """OpenAI's content-part list, text parts only, joined by newlines (as vLLM does)."""
        if not isinstance(value, list):
            return value
        texts: list[str] = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ValueError("only text content parts {'type': 'text', 'text': ...} are served")
            if not isinstance(text := part.get("text"), str):
                raise ValueError("a text content part needs 'text': a string")
            texts.append(text)
        return "\n".join(texts)


class ChatRequest(Request):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > 2048:
            raise ValueError("input must hold 1 to 2048 texts")
        return texts


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str
    add_special_tokens: bool = True
