"""A throwaway PostgreSQL server for tests: a fresh cluster on 127.0.0.1 in a temp folder.

Uses ``MNEME_TEST_POSTGRES_URL`` when set (a server someone else runs). Otherwise finds
Debian's ``initdb``/``pg_ctl``, runs them as the ``postgres`` user when we are root (PostgreSQL
refuses to run as root), and gives back a URL. Returns a skip reason when it cannot start.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.net import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


@contextmanager
def postgres_server() -> Iterator[tuple[str | None, str]]:
    """Yield (url, reason): url is None with the reason when no server could be started."""
    given = os.environ.get("MNEME_TEST_POSTGRES_URL")
    if given:
        yield given, "from MNEME_TEST_POSTGRES_URL"
        return
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        yield None, "PostgreSQL is not installed (apt-get install postgresql)"
        return
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            yield None, "running as root and there is no 'postgres' user to run PostgreSQL"
            return
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="mneme-pg-"))
    data, port = root / "data", free_port()
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    log = root / "server.log"
    try:
        subprocess.run(
            [*prefix, initdb, "-D", str(data), "-U", "mneme", "-A", "trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *prefix,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "60",
                "start",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {root} -F",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
    except (subprocess.SubprocessError, OSError) as err:
        detail = getattr(err, "stderr", b"") or b""
        yield None, f"PostgreSQL did not start: {err} {detail.decode(errors='replace')[-300:]}"
        shutil.rmtree(root, ignore_errors=True)
        return
    try:
        yield f"postgresql+psycopg://mneme@127.0.0.1:{port}/postgres", "temporary cluster"
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at ``server``; yields its URL, then drops
    it (``WITH (FORCE)``: connections other processes left open do not keep it)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
