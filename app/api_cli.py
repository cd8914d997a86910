"""``mneme api`` (serve the REST API) and ``mneme keys`` (tenants' API keys)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.runtime import open_database
from app.settings import load_settings
from memory.keys import ApiKey, SqlKeyStore

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
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


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
