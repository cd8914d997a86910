"""Tenants and their API keys. Only a SHA-256 hash of each key is stored.

A key reads ``mneme_<id>_<secret>``: ``id`` (12 hex digits) is its public name, shown in listings
and used to revoke it; ``secret`` is 256 random bits, so an unsalted SHA-256 is enough (nobody can
brute-force the preimage of a high-entropy key). A tenant owns the namespaces whose names start
with :func:`tenant_prefix`; the REST API checks that prefix on every record it hands out.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from memory.database import Database
from memory.errors import InvalidRecord, NotFound
from memory.tables import ApiKeyRow, TenantRow, utcnow

KEY_PREFIX = "mneme_"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KEY = re.compile(r"^mneme_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class Tenant:
    """An API tenant: its id and name."""

    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key's public facts (never the key itself)."""

    id: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


def check_tenant(name: str) -> str:
    """``name`` if it is a valid tenant name, else :class:`InvalidRecord` naming the rule."""
    if not isinstance(name, str) or not _TENANT.match(name):
        raise InvalidRecord(
            f"tenant {name!r} is not valid: use 1-63 characters from lowercase letters, digits, "
            "'-' and '_', starting with a letter or digit"
        )
    return name


def tenant_prefix(tenant: str) -> str:
    """The namespace prefix a tenant owns: ``tenant:<name>/``."""
    return f"tenant:{check_tenant(tenant)}/"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _to_key(row: ApiKeyRow, tenant: str) -> ApiKey:
    return ApiKey(id=row.id, tenant=tenant, created_at=row.created_at, revoked_at=row.revoked_at)


def _to_tenant(row: TenantRow) -> Tenant:
    return Tenant(id=row.id, name=row.name, created_at=row.created_at)


class SqlKeyStore:
    """Create tenants and keys, check a presented key, revoke keys."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def create(self, tenant: str) -> tuple[ApiKey, str]:
        """A new key for ``tenant`` (created on first use); returns the key's facts and the key
        itself, which is shown this once and never stored."""
        check_tenant(tenant)
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        with self.database.session() as session:
            row = session.scalar(select(TenantRow).where(TenantRow.name == tenant))
            if row is None:
                row = TenantRow(name=tenant)
                session.add(row)
                session.flush()
            key_row = ApiKeyRow(id=key_id, tenant_id=row.id, key_hash=key_hash(key))
            session.add(key_row)
            session.flush()
            return _to_key(key_row, tenant), key

    def authenticate(self, key: str) -> Tenant | None:
        """The tenant of a valid, unrevoked key; None for anything else (no detail leaks)."""
        if not _KEY.match(key):
            return None
        with self.database.session() as session:
            found = session.execute(
                select(TenantRow)
                .join(ApiKeyRow, ApiKeyRow.tenant_id == TenantRow.id)
                .where(ApiKeyRow.key_hash == key_hash(key), ApiKeyRow.revoked_at.is_(None))
            ).scalar_one_or_none()
            return None if found is None else _to_tenant(found)

    def revoke(self, key_or_id: str) -> ApiKey:
        """Revoke a key, named by the key itself or by its id; revoking twice is harmless."""
        match = _KEY.match(key_or_id)
        with self.database.session() as session:
            if match:
                condition = ApiKeyRow.key_hash == key_hash(key_or_id)
            else:
                condition = ApiKeyRow.id == key_or_id
            found = session.execute(
                select(ApiKeyRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .where(condition)
            ).one_or_none()
            if found is None:
                shown = key_or_id if len(key_or_id) <= 20 else key_or_id[:20] + "…"
                raise NotFound(
                    f"no API key {shown!r}; give a key or a key id as listed by `mneme keys list`"
                )
            row, tenant = found
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _to_key(row, tenant)

    def all(self, tenant: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant, if given), oldest first."""
        with self.database.session() as session:
            query = (
                select(ApiKeyRow, TenantRow.name)
                .join(TenantRow, TenantRow.id == ApiKeyRow.tenant_id)
                .order_by(ApiKeyRow.created_at, ApiKeyRow.id)
            )
            if tenant is not None:
                query = query.where(TenantRow.name == check_tenant(tenant))
            return [_to_key(row, name) for row, name in session.execute(query)]
