"""``mneme doctor``: check each component and say what to do about what is broken."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx

from app.errors import MnemeError
from app.runtime import open_database, open_embedder, open_vector_index, prepare_home
from app.settings import Settings
from memory.database import describe_url
from memory.errors import StoreError
from serving.catalog import locate_model
from serving.errors import ServingError


@dataclass(frozen=True, slots=True)
class Check:
    component: str
    ok: bool
    detail: str  # what was found, or what is wrong and how to fix it

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _home(settings: Settings) -> str:
    return f"{prepare_home(settings)} is writable"


def _database(settings: Settings) -> str:
    database = open_database(settings)
    try:
        revision = database.current_revision()
        return f"{describe_url(database.url)} at migration {revision}"
    finally:
        database.close()


def _vector_store(settings: Settings) -> str:
    index = open_vector_index(settings)
    index.ping()
    return f"Chroma at {index.location}, {len(index.namespace_ids())} namespace(s) with vectors"


def _embedder(settings: Settings) -> str:
    embedder = open_embedder(settings)
    vector = embedder.embed(["doctor"])[0]
    return f"{embedder.model_name}, dimension {vector.shape[0]}"


def _llm(settings: Settings) -> str:
    if settings.llm_base_url is None:
        location = locate_model(settings.llm_model)
        return f"built-in engine, model {location.name} at {location.path or 'the hub cache'}"
    headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key else {}
    url = f"{settings.llm_base_url}/models"
    try:
        response = httpx.get(url, headers=headers, timeout=min(settings.llm_timeout_s, 10.0))
    except httpx.HTTPError as err:
        raise ConnectionError(
            f"{url} did not answer ({err}); start the server or fix MNEME_LLM_BASE_URL"
        ) from err
    if response.status_code != 200:
        raise ConnectionError(
            f"{url} answered HTTP {response.status_code}; check MNEME_LLM_API_KEY and the URL"
        )
    try:
        served = [str(model["id"]) for model in response.json()["data"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ConnectionError(f"{url} is not an OpenAI-compatible /models endpoint") from err
    if settings.llm_model and settings.llm_model not in served:
        raise ConnectionError(
            f"{url} does not serve {settings.llm_model!r} (it serves {served}); fix MNEME_LLM_MODEL"
        )
    return f"{settings.llm_base_url} serves {', '.join(served) or 'no models'}"


_CHECK_FAILURES = (MnemeError, StoreError, ServingError, ConnectionError, OSError)

CHECKS: tuple[tuple[str, Callable[[Settings], str]], ...] = (
    ("home", _home),
    ("database", _database),
    ("vector_store", _vector_store),
    ("embedder", _embedder),
    ("llm", _llm),
)


def run_checks(settings: Settings, only: str | None = None) -> list[Check]:
    """Run every check (or the one named ``only``); one failing never stops the others."""
    results = []
    for component, check in CHECKS:
        if only is not None and component != only:
            continue
        try:
            results.append(Check(component, True, check(settings)))
        except _CHECK_FAILURES as err:
            results.append(Check(component, False, str(err)))
    return results
