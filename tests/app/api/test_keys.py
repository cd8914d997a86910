"""API keys: created per tenant and shown once, stored only as a hash, revoked by key or id."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import cli
from app.reading import Reading
from memory import Database, InvalidRecord, NotFound
from memory.keys import SqlKeyStore, tenant_prefix
from memory.tables import ApiKeyRow
from memory.tenancy import SqlTenancy


def test_only_a_hash_is_stored_and_revocation_is_immediate(api_database: Database) -> None:
    store = SqlKeyStore(api_database)
    facts, key = store.create("acme")
    assert key.startswith(f"mneme_{facts.id}_") and len(key) == 6 + 12 + 1 + 43
    with api_database.session() as session:
        row = session.scalars(select(ApiKeyRow)).one()
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert key not in {str(v) for v in vars(row).values()}
    tenant = store.authenticate(key)
    assert tenant is not None and tenant.name == "acme"
    assert store.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.authenticate("") is None and store.authenticate("x" * 10_000) is None
    _, second = store.create("acme")
    assert store.revoke(key).revoked_at is not None  # by the key itself
    assert store.authenticate(key) is None and store.authenticate(second) is not None
    assert store.revoke(facts.id).revoked_at is not None  # again, by id: harmless
    with pytest.raises(NotFound, match="keys list"):
        store.revoke("nope")
    assert [k.tenant for k in store.all()] == ["acme", "acme"]
    assert store.all("other") == []


def test_tenant_names_are_checked(api_database: Database) -> None:
    for name in ["", "Acme", "a b", "-x", "a/b", "x" * 64, "tenant:x"]:
        with pytest.raises(InvalidRecord, match="tenant"):
            SqlKeyStore(api_database).create(name)
        with pytest.raises(InvalidRecord):
            tenant_prefix(name)
    assert tenant_prefix("a_b-1") == "tenant:a_b-1/"


def test_the_cli_prints_the_key_once_and_revokes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MNEME_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MNEME_DATABASE_URL", raising=False)
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--tenant", "acme", "--json"])
    assert created.exit_code == 0, created.output
    data = json.loads(created.stdout)
    assert data["tenant"] == "acme" and data["key"].startswith("mneme_")
    listed = json.loads(runner.invoke(cli, ["keys", "list", "--json"]).stdout)["keys"]
    assert [k["id"] for k in listed] == [data["id"]] and data["key"] not in json.dumps(listed)
    revoked = runner.invoke(cli, ["keys", "revoke", data["key"], "--json"])
    assert json.loads(revoked.stdout)["revoked_at"] is not None
    plain = runner.invoke(cli, ["keys", "list"])
    assert "revoked" in plain.stdout


def test_listing_by_prefix_escapes_like_wildcards(reading: Reading) -> None:
    store = reading.store
    mine = store.namespace(f"{tenant_prefix('a_c')}documents/1")
    store.namespace(f"{tenant_prefix('abc')}documents/2")  # '_' would match 'b' unescaped
    tenancy = SqlTenancy(store.database)
    assert [n.id for n in tenancy.namespaces(tenant_prefix("a_c"))] == [mine.id]
    assert tenancy.namespace(mine.id, tenant_prefix("abc")) is None
