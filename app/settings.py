"""Settings: the only module that reads the environment.

Every variable has the prefix ``MNEME_``. With nothing set, everything runs embedded on one machine:
SQLite and a persistent Chroma folder under ``MNEME_HOME``, the built-in engine for the LLM.
A bad value fails at start-up with a :class:`~app.errors.SettingsError` naming the variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.errors import SettingsError

_ENV_PREFIX = "MNEME_"
_DATABASE_SCHEMES = ("sqlite", "postgresql")


def _http_url(value: str | None, example: str) -> str | None:
    if value is None or value.strip() == "":
        return None
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r} is not an http(s) URL; expected something like {example}")
    return value.strip().rstrip("/")


class Settings(BaseSettings):
    """Mneme's configuration, read from ``MNEME_*`` variables (and a ``.env`` file if present)."""

    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX, env_file=".env", extra="ignore", frozen=True
    )

    home: Path = Field(
        default_factory=lambda: Path.home() / ".mneme",
        description="Folder for the embedded SQLite file and the Chroma folder.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; unset = sqlite:///<home>/mneme.db.",
    )
    chroma_url: str | None = Field(
        default=None,
        description="URL of a Chroma server; unset = embedded persistent Chroma in <home>/chroma.",
    )
    llm_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible base URL (…/v1); unset = the built-in engine in-process.",
    )
    llm_model: str | None = Field(
        default=None,
        description="Model on the server, or a Hugging Face name / local folder for the engine.",
    )
    llm_api_key: str | None = Field(default=None, description="API key for the LLM endpoint.")
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="sentence-transformers model name or local folder for embeddings.",
    )
    llm_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=60.0, description="Seconds before an LLM request is abandoned."
    )
    llm_context_tokens: Annotated[int, Field(gt=16)] | None = Field(
        default=None,
        description="Context of the LLM in tokens (surprise windows); unset = the built-in "
        "engine's, or 4096 for a server.",
    )
    tokenizer: str | None = Field(
        default=None,
        description="Tokenizer that counts budgets: a tiktoken name or a local model folder; "
        "unset = the LLM model's, else cl100k_base.",
    )
    segmenter: Literal["auto", "surprise", "embedding", "fixed"] = Field(
        default="embedding",
        description="How documents are cut into episodes: embedding novelty (the default: fast, "
        "no model), surprise (the LLM's per-token surprise; slow on a CPU), fixed windows, or "
        "auto = surprise when the LLM gives logprobs, else embedding novelty.",
    )
    cross_encoder: Path | None = Field(
        default=None,
        description="A local sentence-transformers CrossEncoder folder that reranks recall's "
        "first stage; unset = no reranking (none ships with Mneme).",
    )
    event_min_tokens: Annotated[int, Field(ge=1)] = Field(
        default=16, description="Smallest episode in tokens."
    )
    event_max_tokens: Annotated[int, Field(ge=8)] = Field(
        default=192, description="Largest episode in tokens."
    )
    recall_budget_tokens: Annotated[int, Field(ge=16)] = Field(
        default=1024, description="Default token budget of a search."
    )
    writer_candidates: Annotated[int, Field(ge=1, le=16)] = Field(
        default=1,
        description="Paragraph drafts per writer step; above 1 the reranker keeps the best.",
    )
    writer_temperature: Annotated[float, Field(ge=0.0, le=2.0)] = Field(
        default=0.8, description="Sampling temperature of the writer's paragraphs and notes."
    )
    writer_top_p: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        default=0.95, description="Nucleus sampling mass of the writer."
    )
    writer_min_p: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=0.05, description="vLLM's min_p for the writer (0 = off)."
    )
    writer_repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] = Field(
        default=1.15, description="vLLM's repetition penalty for the writer (1 = off)."
    )
    writer_presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = Field(
        default=0.0, description="OpenAI's presence penalty for the writer (0 = off)."
    )
    writer_frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = Field(
        default=0.0, description="OpenAI's frequency penalty for the writer (0 = off)."
    )
    writer_paragraph_tokens: Annotated[int, Field(ge=16, le=2048)] = Field(
        default=220, description="Most tokens of one paragraph."
    )
    writer_step_timeout_s: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        default=180.0, description="Seconds after which a writer step fails (nothing stored)."
    )
    writer_step_target_s: Annotated[float, Field(gt=0.0, le=3600.0)] = Field(
        default=60.0,
        description="Seconds a writer step aims for: its notes are stopped when they pass (the "
        "first try gets at least 15 s) and another try starts only if it should end within "
        "them; else the step keeps its paragraph with the previous notes.",
    )
    rerank_scorer: str = Field(
        default="embedder",
        description='Reranker of paragraph drafts: "embedder" (the bundled MiniLM) or a RankGen '
        "checkpoint (hub name from the local cache, or a folder).",
    )
    rerank_folders: str = Field(
        default="",
        description="Local RankGen checkpoints offered as scorers: name=/path[,name=/path].",
    )
    api_max_upload_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=20 * 1024 * 1024,
        description="Largest document the REST API accepts, in bytes (larger answers 413).",
    )
    api_job_workers: Annotated[int, Field(ge=1)] = Field(
        default=2, description="Jobs (ingest, summarise) one REST API process runs at once."
    )
    api_job_queue: Annotated[int, Field(ge=0)] = Field(
        default=32,
        description="Jobs one REST API process keeps waiting for a worker at most; beyond that "
        "an upload or summarise answers 429 with Retry-After.",
    )
    api_model_slots: Annotated[int, Field(ge=1)] = Field(
        default=2,
        description="Model requests (ask, story steps) one REST API process runs at once; more "
        "wait in a queue.",
    )
    api_model_queue: Annotated[int, Field(ge=0)] = Field(
        default=16,
        description="Model requests waiting at most; beyond that the API answers 429 with "
        "Retry-After.",
    )
    api_tenant_queue: Annotated[int, Field(ge=1)] = Field(
        default=4,
        description="Model requests (and, times two, jobs) one tenant may have waiting; tenants "
        "are served in turn.",
    )
    api_request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        default=120.0,
        description="Deadline of a model request (queueing included): past it the work is "
        "stopped and the client gets 429 (never started) or 504 (too slow).",
    )
    api_shutdown_s: Annotated[float, Field(gt=0)] = Field(
        default=10.0,
        description="Seconds the REST API waits for requests to end after SIGTERM before it "
        "stops them (their jobs are failed, to be submitted again).",
    )
    sqlite_synchronous: Literal["off", "normal", "full", "extra"] = Field(
        default="full",
        description="SQLite's synchronous setting: 'full' (default) makes every commit (a "
        "revoked key, an accepted job) survive power loss; 'normal' is faster but may lose the "
        "last commits on power loss (never corrupts). PostgreSQL: set synchronous_commit there.",
    )
    api_job_heartbeat_s: Annotated[float, Field(gt=0)] = Field(
        default=2.0, description="Seconds between a REST API worker's heartbeats on its jobs."
    )
    api_job_stale_s: Annotated[float, Field(gt=0)] = Field(
        default=30.0,
        description="Seconds without a heartbeat after which a job's worker is taken for dead "
        "and the job is ended (failed, or done if its result was stored).",
    )

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip() == "":
                raise ValueError("is empty; give a folder path such as ~/.mneme")
            return Path(value).expanduser()
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        example = "sqlite:////path/to/mneme.db or postgresql+psycopg://user:password@host/db"
        try:
            url = make_url(value.strip())
        except ArgumentError as err:
            raise ValueError(f"{value!r} is not a database URL; expected {example}") from err
        if url.get_backend_name() not in _DATABASE_SCHEMES:
            raise ValueError(
                f"backend {url.get_backend_name()!r} is not supported; expected {example}"
            )
        return value.strip()

    @field_validator("rerank_folders")
    @classmethod
    def _check_rerank_folders(cls, value: str) -> str:
        from serving.rerank.scorers import scorer_folders

        scorer_folders(value)  # ValueError names the bad entry
        return value

    @property
    def scorer_folders(self) -> dict[str, str]:
        """``rerank_folders`` as name → folder."""
        from serving.rerank.scorers import scorer_folders

        return scorer_folders(self.rerank_folders)

    @field_validator("chroma_url")
    @classmethod
    def _check_chroma_url(cls, value: str | None) -> str | None:
        return _http_url(value, "http://localhost:8000")

    @field_validator("llm_base_url")
    @classmethod
    def _check_llm_base_url(cls, value: str | None) -> str | None:
        return _http_url(value, "http://localhost:8000/v1")

    @field_validator("embedding_model", "llm_model", "llm_api_key", "tokenizer")
    @classmethod
    def _strip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.strip() == "":
            raise ValueError("is empty; unset the variable to use the default")
        return value.strip()

    @model_validator(mode="after")
    def _check_event_sizes(self) -> Settings:
        if self.event_min_tokens > self.event_max_tokens:
            raise ValueError(
                f"MNEME_EVENT_MIN_TOKENS={self.event_min_tokens} is above "
                f"MNEME_EVENT_MAX_TOKENS={self.event_max_tokens}; make the minimum the smaller"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use: the configured one, or SQLite under home."""
        return self.database_url or f"sqlite:///{self.home / 'mneme.db'}"

    @property
    def chroma_path(self) -> Path:
        """Folder of the embedded Chroma store (unused when ``chroma_url`` is set)."""
        return self.home / "chroma"

    @property
    def is_embedded_sqlite(self) -> bool:
        """True when the database is a SQLite file Mneme owns (and so migrates at start-up)."""
        return make_url(self.resolved_database_url).get_backend_name() == "sqlite"


def _variable_name(location: tuple[int | str, ...]) -> str:
    field = str(location[0]) if location else "?"
    return f"{_ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise :class:`SettingsError` naming the bad variable.

    ``overrides`` take precedence over the environment (CLI flags, tests).
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        problems = []
        for error in err.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            where = f"{_variable_name(error['loc'])}: " if error["loc"] else ""
            problems.append(where + message)
        raise SettingsError("invalid configuration: " + "; ".join(problems)) from err
