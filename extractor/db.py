"""Database connections and safe SQL building.

Identifiers from config (schema, table names) are validated (extractor.settings.check_identifier)
and quoted with psycopg2.sql.Identifier; values always go as query parameters.
"""

from __future__ import annotations

import contextlib
import os

import psycopg2
from psycopg2 import sql

from extractor.errors import CbmError, one_line
from extractor.settings import Settings, check_identifier, read_secret_file


def connect_kwargs(settings: Settings) -> dict:
    """libpq keywords from the settings; empty keys are left to libpq (PG* variables, defaults)."""
    db = settings.db
    # TCP keepalives: a server or a network gone silent (a VM restarted, a NAT timeout) is noticed in
    # about a minute instead of when the kernel gives up on the connection (hours)
    kwargs = {"application_name": "cbm", "connect_timeout": db.connect_timeout,
              "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
    for key, value in (("host", db.host), ("port", db.port), ("dbname", db.name), ("user", db.user)):
        if value not in (None, ""):
            kwargs[key] = value
    if db.password_file:
        kwargs["password"] = read_secret_file(db.password_file, "db.password_file")
    return kwargs


def describe(settings: Settings) -> str:
    """Where we connect, for messages: host:port/db as user (never the password)."""
    db = settings.db
    host = db.host or os.environ.get("PGHOST") or "local socket"
    port = db.port or os.environ.get("PGPORT") or 5432
    name = db.name or os.environ.get("PGDATABASE") or "(default db)"
    user = db.user or os.environ.get("PGUSER") or "(default user)"
    return f"{host}:{port}/{name} as {user}"


def connect(settings: Settings):
    """Open a connection or fail with one line naming the server and the fix."""
    try:
        conn = psycopg2.connect(**connect_kwargs(settings))
    except psycopg2.OperationalError as exc:
        reason = one_line(exc)
        raise CbmError(
            f"cannot connect to the database {describe(settings)}: {reason}; "
            "check the db settings (cbm config show) or the PG* variables"
        ) from None
    return conn


@contextlib.contextmanager
def session(settings: Settings):
    """A connection whose work is committed on success and rolled back on any error."""
    conn = connect(settings)
    try:
        with conn:
            yield conn
    except psycopg2.OperationalError as exc:
        reason = one_line(exc)
        raise CbmError(f"lost the database {describe(settings)}: {reason}; nothing was committed") from None
    finally:
        conn.close()


def table(settings: Settings, key_or_name: str) -> sql.Composed:
    """A schema-qualified, quoted table: a key of settings.tables ('sigs') or a validated name."""
    name = getattr(settings.tables, key_or_name, None) or check_identifier(key_or_name, "table")
    return sql.SQL("{}.{}").format(sql.Identifier(settings.db.schema), sql.Identifier(name))


def table_exists(conn, settings: Settings, name: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = %s",
            (settings.db.schema, name),
        )
        return cur.fetchone() is not None


def server_facts(conn) -> dict:
    """The database and server a connection reached: name, versions, size, uptime."""
    with conn.cursor() as cur:
        cur.execute("SELECT current_database(), current_setting('server_version'),"
                    " (SELECT extversion FROM pg_extension WHERE extname = 'postgis'),"
                    " pg_database_size(current_database()), now() - pg_postmaster_start_time()")
        name, version, postgis, size, uptime = cur.fetchone()
    return {"database": name, "server": version, "postgis": postgis, "size": size, "uptime": uptime}
