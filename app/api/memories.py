"""``/v1/memories/{namespace}``: an agent's episodic memory over HTTP — add events, search
(two-stage recall within a token budget), pin, forget.

Each event becomes one episode, in the order received, so recall's contiguity buffer follows
the agent's timeline. A tenant's memory ``name`` is the namespace ``tenant:<tenant>/memories/
<name>``; names never cross tenants. Episode ids are public ids (``app/api/ids.py``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParameter

from app.api.auth import Authenticated, Services
from app.api.documents import hit
from app.api.errors import ERROR_RESPONSES
from app.api.ids import PublicIds
from app.api.schemas import (
    Deleted,
    EpisodeOut,
    Episodes,
    EventsRequest,
    ForgetRequest,
    Forgotten,
    Hits,
    MemoryList,
    MemoryOut,
    PinRequest,
    SearchRequest,
)
from app.api.services import ApiServices, Caller
from memory import Episode, InvalidRecord, NewEpisode, NotFound
from memory.episodic import EpisodicMemory
from memory.forgetting import ForgetPolicy
from memory.tables import utcnow

router = APIRouter(prefix="/v1", tags=["memories"], responses=ERROR_RESPONSES)

MemoryName = Annotated[
    str,
    PathParameter(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}$",
        description="The memory's name: 1-100 letters, digits and ._:@- (yours alone).",
    ),
]


def _episode_out(ids: PublicIds, episode: Episode) -> EpisodeOut:
    return EpisodeOut(
        id=ids.episodes.encode(episode.id),
        text=episode.text,
        importance=episode.importance,
        pinned=episode.pinned,
        version=episode.version,
        created_at=episode.created_at,
        expires_at=episode.expires_at,
    )


def _existing(api: ApiServices, caller: Caller, name: str) -> EpisodicMemory:
    """The tenant's memory ``name``, or 404 if nothing was ever added to it."""
    namespace = f"{caller.memories}{name}"
    try:
        api.store.namespaces.get(namespace)
    except NotFound as err:
        raise NotFound(f"memory {name!r} does not exist; add events to create it") from err
    return api.reading.memory(namespace, "fixed")


def _episodes(
    api: ApiServices, memory: EpisodicMemory, name: str, episode_ids: list[int]
) -> list[Episode]:
    """The episodes of public ids ``episode_ids`` (each once, in order), else 404 naming the
    ids that are not in the memory, as the client sent them."""
    wanted = {api.ids.episodes.decode(public): public for public in dict.fromkeys(episode_ids)}
    found = {e.id: e for e in api.store.episodes.get_many(memory.namespace, list(wanted))}
    missing = sorted(public for row, public in wanted.items() if row not in found)
    if missing:
        raise NotFound(f"episodes {missing[:20]} do not exist in memory {name!r}")
    return [found[row] for row in wanted]


@router.post("/memories/{name}/events", status_code=201, response_model=Episodes)
def add_events(
    name: MemoryName, body: EventsRequest, api: Services, caller: Authenticated
) -> Episodes:
    """Store events as episodes, in order (the memory is created on first use)."""
    now = utcnow()
    count = api.reading.count_tokens
    new = [
        NewEpisode(
            text=event.text,
            token_count=count(event.text),
            importance=event.importance,
            pinned=event.pinned,
            expires_at=None if event.ttl_s is None else now + timedelta(seconds=event.ttl_s),
        )
        for event in body.events
    ]
    stored = api.store.add(f"{caller.memories}{name}", new)
    return Episodes(episodes=[_episode_out(api.ids, e) for e in stored])


@router.post("/memories/{name}/search", response_model=Hits)
async def search_memory(
    name: MemoryName, body: SearchRequest, api: Services, caller: Authenticated
) -> Hits:
    """Episodes for the query within the token budget, in the order they were added."""
    memory = await asyncio.to_thread(_existing, api, caller, name)
    recalled = await memory.search(
        body.query,
        budget_tokens=body.budget_tokens,
        k_similar=body.k_similar,
        k_contiguous=body.k_contiguous,
    )
    return Hits(hits=[hit(api.ids, r, None) for r in recalled])


@router.post("/memories/{name}/pin", response_model=Episodes)
async def pin(name: MemoryName, body: PinRequest, api: Services, caller: Authenticated) -> Episodes:
    """Pin (or with ``pinned: false`` unpin) episodes: pinned ones are never forgotten."""
    memory = await asyncio.to_thread(_existing, api, caller, name)
    episodes = await asyncio.to_thread(_episodes, api, memory, name, body.episode_ids)
    try:
        changed = [await memory.pin(e.id, body.pinned) for e in episodes]
    except NotFound as err:  # forgotten meanwhile: say which, in public ids
        await asyncio.to_thread(_episodes, api, memory, name, body.episode_ids)
        raise NotFound(api.ids.reword(str(err))) from err
    return Episodes(episodes=[_episode_out(api.ids, e) for e in changed])


@router.post("/memories/{name}/forget", response_model=Forgotten)
async def forget(
    name: MemoryName, body: ForgetRequest, api: Services, caller: Authenticated
) -> Forgotten:
    """Forget the episodes named, every expired one, and with a policy the faded ones."""
    if (body.half_life_s is None) != (body.threshold is None):
        raise InvalidRecord("give both half_life_s and threshold to forget by decay, or neither")
    policy = None
    if body.half_life_s is not None and body.threshold is not None:
        try:
            policy = ForgetPolicy(timedelta(seconds=body.half_life_s), body.threshold)
        except ValueError as err:
            raise InvalidRecord(f"cannot forget by decay: {err}") from err
    memory = await asyncio.to_thread(_existing, api, caller, name)
    episodes = await asyncio.to_thread(_episodes, api, memory, name, body.episode_ids)
    if pinned := [api.ids.episodes.encode(e.id) for e in episodes if e.pinned]:
        raise InvalidRecord(
            f"episodes {pinned[:20]} are pinned; unpin them before forgetting "
            f"(POST /v1/memories/{name}/pin with pinned: false)"
        )
    try:
        forgotten = await memory.forget([e.id for e in episodes], policy=policy)
    except (NotFound, InvalidRecord) as err:  # changed meanwhile (forgotten, pinned)
        raise type(err)(api.ids.reword(str(err))) from err
    return Forgotten(forgotten=[api.ids.episodes.encode(row) for row in forgotten])


@router.get("/memories", response_model=MemoryList)
def list_memories(api: Services, caller: Authenticated) -> MemoryList:
    spaces = api.tenancy.namespaces(caller.memories)
    return MemoryList(
        memories=[
            MemoryOut(
                namespace=s.name.removeprefix(caller.memories),
                episodes=api.store.episodes.count(s.name),
                created_at=s.created_at,
            )
            for s in spaces
        ]
    )


@router.delete("/memories/{name}", response_model=Deleted)
def delete_memory(name: MemoryName, api: Services, caller: Authenticated) -> Deleted:
    """Delete a memory with all its episodes (rows and vectors)."""
    memory = _existing(api, caller, name)
    api.store.delete_namespace(memory.namespace)
    return Deleted(id=name, deleted=True)
