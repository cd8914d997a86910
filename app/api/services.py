"""What the REST API holds for its lifetime: settings, the reading/writing services, keys,
ownership lookups, public ids and the job worker. Built by :func:`app.api.app.create_app`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agents.errors import AgentConfigError
from agents.reader import DocumentReader
from app.api.admission import Gate
from app.api.ids import PublicIds
from app.errors import SettingsError
from app.reading import Reading
from app.settings import Settings
from app.story_runs import StoryRuns
from app.writing import Writing
from memory import MemoryStore
from memory.keys import SqlKeyStore, tenant_prefix
from memory.public_ids import SqlPublicIdKey
from memory.tenancy import SqlTenancy


@dataclass(frozen=True, slots=True)
class Caller:
    """The tenant a request was authenticated as, and the namespaces it owns."""

    tenant: str

    @property
    def prefix(self) -> str:
        return tenant_prefix(self.tenant)

    @property
    def documents(self) -> str:
        """Prefix of the tenant's documents (one namespace each)."""
        return f"{self.prefix}documents/"

    @property
    def stories(self) -> str:
        return f"{self.prefix}stories/"

    @property
    def memories(self) -> str:
        return f"{self.prefix}memories/"


class ApiServices:
    """The API's long-lived objects; the LLM is loaded on the first request that needs it."""

    def __init__(self, settings: Settings, reading: Reading | None = None) -> None:
        self.settings = settings
        self.reading = reading or Reading(settings)
        self._writing: Writing | None = None
        self._runs: StoryRuns | None = None
        self._ids: PublicIds | None = None
        self._llm_lock = asyncio.Lock()
        self.model_gate = Gate(
            "model",
            slots=settings.api_model_slots,
            queue=settings.api_model_queue,
            per_tenant=settings.api_tenant_queue,
        )
        """Interactive model work: ask, story openings and steps."""
        self.job_gate = Gate(
            "job",
            slots=settings.api_job_workers,
            queue=settings.api_job_queue,
            per_tenant=2 * settings.api_tenant_queue,
        )
        """Jobs: ingest and summarise."""

    @property
    def store(self) -> MemoryStore:
        return self.reading.store

    @property
    def keys(self) -> SqlKeyStore:
        return SqlKeyStore(self.store.database)

    @property
    def tenancy(self) -> SqlTenancy:
        return SqlTenancy(self.store.database)

    @property
    def ids(self) -> PublicIds:
        """Row ids to public ids and back, under the database's key (read once)."""
        if self._ids is None:
            self._ids = PublicIds(SqlPublicIdKey(self.store.database).get())
        return self._ids

    @property
    def writing(self) -> Writing:
        if self._writing is None:
            self._writing = Writing(self.reading)
        return self._writing

    @property
    def runs(self) -> StoryRuns:
        """The writer's running steps (one per story; visible while they run)."""
        if self._runs is None:
            self._runs = StoryRuns(self.writing)
        return self._runs

    async def load_llm(self) -> None:
        """Load the LLM once, off the event loop (a local model takes seconds)."""
        async with self._llm_lock:
            await asyncio.to_thread(lambda: self.reading.llm)

    async def reader(self, namespace: str) -> DocumentReader:
        await self.load_llm()
        try:
            return await asyncio.to_thread(self.reading.reader, namespace)
        except AgentConfigError as err:  # the model's context cannot hold the reader's prompts
            raise SettingsError(
                f"the LLM cannot answer from documents: {err}; configure a model with a longer "
                "context (MNEME_LLM_MODEL, MNEME_LLM_CONTEXT_TOKENS)"
            ) from err

    def close(self) -> None:
        self.reading.close()
