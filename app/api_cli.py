"""``mneme api`` (serve the REST API) and ``mneme keys`` (tenants' API keys)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Annotated

import typer

from app.runtime import open_database
from app.settings import load_settings
from memory.keys import ApiKey, SqlKeyStore

if TYPE_CHECKING:
    import uvicorn

keys_cli = typer.Typer(
    help="API keys of the REST API: create (per tenant), list, revoke.", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def _keys() -> SqlKeyStore:
    return SqlKeyStore(open_database(load_settings()))


def _facts(key: ApiKey) -> dict[str, str | None]:
    return {
        "id": key.id,
        "tenant": key.tenant,
        "created_at": key.created_at.isoformat(),
        "revoked_at": None if key.revoked_at is None else key.revoked_at.isoformat(),
    }


def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
) -> None:
    """Serve the REST API (documents, jobs, stories, memories); docs at /docs."""
    import uvicorn

    from app.api import create_app

    settings = load_settings()
    open_database(settings).close()  # fail here, clearly, before the server starts
    typer.echo(f"Mneme API at http://{host}:{port} (docs: http://{host}:{port}/docs)", err=True)
    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=math.ceil(settings.api_shutdown_s),
    )
    serve(uvicorn.Server(config), settings.api_shutdown_s)


def serve(server: uvicorn.Server, grace_s: float) -> None:
    """Run ``server`` until SIGTERM/SIGINT, then exit within about twice ``grace_s``.

    uvicorn waits ``grace_s`` for requests to end and then cancels them; the app's shutdown
    fails its unfinished jobs in SQL. What is still running in worker threads after that
    (an embedding batch, a parse) computes for nobody: it gets ``grace_s`` more, then the
    process exits without it — as after a crash, which the stores are built to survive (a
    SQL transaction is atomic, vectors are repaired at the next start).
    """
    from app.api.heap import limit_arenas  # the CLI starts without the API

    limit_arenas(2 * (os.cpu_count() or 1))  # before the pools' threads exist (app/api/heap)
    executor = ThreadPoolExecutor(thread_name_prefix="mneme-api")
    loop = asyncio.new_event_loop()
    loop.set_default_executor(executor)
    try:
        # uvicorn re-raises SIGINT once it has shut down; the loop must still run the async
        # generators' (and anyio's) stop callbacks, or a worker thread blocks the exit.
        with contextlib.suppress(KeyboardInterrupt):
            loop.run_until_complete(server.serve())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace_s
        busy = [t for t in threading.enumerate() if t.name.startswith("mneme-api")]
        for thread in busy:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in busy):
            logging.getLogger("mneme.api").warning(
                "exiting with work still running in threads; its jobs were failed"
            )
            sys.stderr.flush()
            os._exit(0)


@keys_cli.command("create")
def create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the key belongs to.")],
    as_json: JsonOption = False,
) -> None:
    """Create an API key for a tenant (the tenant is created on first use).

    The key is printed once; only its hash is stored.
    """
    key, secret = _keys().create(tenant)
    if as_json:
        typer.echo(json.dumps({"tenant": key.tenant, "key": secret, "id": key.id}))
    else:
        typer.echo(secret)
        typer.echo(f"key {key.id} for tenant {key.tenant}: keep it now, it is not shown again",
                   err=True)  # fmt: skip


@keys_cli.command("revoke")
def revoke(
    key_or_id: Annotated[str, typer.Argument(help="The key itself, or its id (keys list).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a key: requests with it are refused from now on."""
    key = _keys().revoke(key_or_id)
    if as_json:
        typer.echo(json.dumps(_facts(key)))
    else:
        typer.echo(f"revoked key {key.id} of tenant {key.tenant}")


@keys_cli.command("list")
def list_keys(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Keys (ids, never the keys themselves), with their tenant and state."""
    keys = _keys().all(tenant)
    if as_json:
        typer.echo(json.dumps({"keys": [_facts(k) for k in keys]}))
        return
    for key in keys:
        state = "active" if key.revoked_at is None else f"revoked {key.revoked_at:%Y-%m-%d}"
        typer.echo(f"{key.id}  {key.tenant}  {key.created_at:%Y-%m-%d}  {state}")
    if not keys:
        typer.echo("no keys yet; create one with `mneme keys create --tenant NAME`")
