"""The local PostgreSQL server for tests and fleet runs: make sure it runs, and hand out throw-away
databases on it.

Tests never share a database: each gets `anju_test_<random>`, dropped afterwards. The server is
the machine's own (Debian's `postgresql` package, which scripts/setup.sh installs); when it is not
running it is started with `pg_ctlcluster`, and when this user has no role on it (a fresh Debian
allows only the `postgres` user over its socket) one is made with `runuser -u postgres`. Where the
server lives elsewhere, ANJU_POSTGRES names an admin URL (`postgresql://user@host/postgres`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

SOCKET_DIR = "/var/run/postgresql"


class PostgresUnavailable(RuntimeError):
    pass


def admin_url() -> str:
    return os.environ.get("ANJU_POSTGRES", f"postgresql:///postgres?host={SOCKET_DIR}")


def _connect(url: str) -> object:
    import psycopg

    return psycopg.connect(url, autocommit=True, connect_timeout=3)


def ensure_running(timeout_s: float = 30.0) -> None:
    """Connect to the admin URL, starting the local cluster or adding our role first if need be."""
    import psycopg

    try:
        _connect(admin_url()).close()  # type: ignore[attr-defined]
        return
    except psycopg.OperationalError as exc:
        problem = str(exc)
    if "ANJU_POSTGRES" in os.environ:
        raise PostgresUnavailable(f"cannot reach PostgreSQL at $ANJU_POSTGRES: {problem}")
    if "does not exist" in problem and "role" in problem:
        _add_role()
    else:
        _start_clusters()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            _connect(admin_url()).close()  # type: ignore[attr-defined]
            return
        except psycopg.OperationalError as exc:
            if "does not exist" in str(exc) and "role" in str(exc):
                _add_role()
            elif time.monotonic() > deadline:
                raise PostgresUnavailable(
                    f"PostgreSQL did not accept connections within {timeout_s:g} s ({exc}); "
                    "install it with `sudo apt-get install postgresql` (make setup does)"
                ) from exc
            time.sleep(0.2)


def _start_clusters() -> None:
    versions = sorted(p.name for p in Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if not versions:
        raise PostgresUnavailable("no PostgreSQL cluster here: `sudo apt-get install postgresql` (make setup does)")
    for version in versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            capture_output=True,
            check=False,
            timeout=60,
        )


def _add_role() -> None:
    user = getpass.getuser()
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", "psql", "-c", f'CREATE ROLE "{user}" SUPERUSER LOGIN'],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0 and "already exists" not in done.stderr:
        raise PostgresUnavailable(f"cannot add a PostgreSQL role for {user}: {done.stderr.strip()}")


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """A fresh, empty database; yields its URL and drops it afterwards."""
    ensure_running()
    name = f"anju_test_{uuid.uuid4().hex[:12]}"
    admin = _connect(admin_url())
    try:
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[attr-defined]
        parts = urlsplit(admin_url())
        yield f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")
    finally:
        with contextlib.suppress(Exception):
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[attr-defined]
        admin.close()  # type: ignore[attr-defined]
