"""The extraction workers' database role and exactly what it may do, made by `cbm db init`.

The workers (the swarm service, `python -m extractor.extract run`) log in as db.worker_user
(`cbm_worker`), never as the owner of the tables; the controller's commands keep the owner. The role
may do what extractor/extract/ does, and nothing else:

    privilege                                   used by
    SELECT  aois, the catalogue, parcel tables  claims (the claimable scenes), worker (the AOI's parcels),
                                                rasterize (the parcels put on a grid)
    UPDATE  (status) of the catalogue           claims: the claim locks the scene row (FOR UPDATE) and
                                                sync_catalogue writes its status
    SELECT, INSERT, UPDATE  extraction_runs     claims: claim (INSERT ... ON CONFLICT DO UPDATE), lease,
                                                finish, release, sweep_exhausted
    SELECT, INSERT, DELETE  extract_grids       rasterize.ensure_grid: a missing grid is stored, the grid
                                                of a reloaded parcel table replaced
    SELECT, INSERT  extract_grid_blocks         idem (a replaced grid's blocks go by ON DELETE CASCADE,
                                                which runs as the owner), GridCache reads them
    USAGE  the extract_grids id sequence        the id of a new grid
    INSERT  sigs, hists                         writer: COPY ... FROM STDIN into the (partitioned) parent;
                                                rows routed to a partition need no privilege on it. A
                                                scene's rows commit with its run's status, so a retried
                                                scene never has rows to delete.

Not granted: CREATE in any schema (PUBLIC's CREATE on the schema is revoked, as PostgreSQL 15 does),
USAGE of other schemas, DELETE or TRUNCATE of results or of the catalogue, superuser or membership of
pg_execute_server_program / pg_read_server_files / pg_write_server_files (so no COPY ... PROGRAM or
COPY ... FILE). The role's attributes are reset on every run (NOSUPERUSER, NOCREATEDB, ...).

Tables the owner makes later in the schema are readable by the role (ALTER DEFAULT PRIVILEGES ...
GRANT SELECT ON TABLES): parcel tables loaded by `cbm parcels load` (or by hand, e.g. ogr2ogr), new
partitions of sigs and hists. Parcel tables that exist already (columns ogc_fid and wkb_geometry,
what the worker reads) are granted SELECT here.

Idempotent: re-running `cbm db init` keeps the role and its grants. The password (db.worker_password_file)
is sent as a SCRAM verifier computed here, never as text; without a password file the role is made
NOLOGIN (or left as it is). An owner that may not create roles (not superuser, no CREATEROLE) gets no
worker role: the workers then log in as whatever the settings name.
"""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extensions import encrypt_password

from extractor.db import table
from extractor.settings import Settings, read_secret_file

ROLE_ATTRIBUTES = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"


def _can_manage_roles(cur) -> bool:
    cur.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    row = cur.fetchone()
    return bool(row and row[0])


def _role_exists(cur, name: str) -> bool:
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
    return cur.fetchone() is not None


def ensure_role(cur, settings: Settings) -> bool:
    """The worker role exists with the least attributes (and the password of db.worker_password_file);
    False when this user may not manage roles (nothing done)."""
    name = settings.db.worker_user
    role = sql.Identifier(name)
    if not _can_manage_roles(cur):
        return False
    if not _role_exists(cur, name):
        # another `cbm db init` may create it at the same moment (roles belong to the whole server)
        cur.execute(sql.SQL("DO $$ BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
                    .format(role))
    cur.execute(sql.SQL("ALTER ROLE {} " + ROLE_ATTRIBUTES).format(role))
    if settings.db.worker_password_file:
        password = read_secret_file(settings.db.worker_password_file, "db.worker_password_file")
        verifier = encrypt_password(password, name, cur.connection)
        cur.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD %s").format(role), (verifier,))
    return True


def parcel_tables(cur, settings: Settings) -> list[str]:
    """Tables of the schema the worker can read parcels from (ogc_fid and wkb_geometry, see
    rasterize.parcel_source), the CbM tables left out."""
    cur.execute("SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
                " AND (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped"
                "      AND a.attname IN ('ogc_fid', 'wkb_geometry')) = 2 ORDER BY 1", (settings.db.schema,))
    return [r[0] for r in cur.fetchall()]


def statements(cur, settings: Settings) -> list[sql.Composable]:
    """The GRANTs (and the REVOKE of PUBLIC's CREATE) that give the role exactly its privileges."""
    role = sql.Identifier(settings.db.worker_user)
    schema = sql.Identifier(settings.db.schema)
    t = {key: table(settings, key) for key in ("aois", "catalogue", "sigs", "hists", "extraction_runs",
                                               "extract_grids", "extract_grid_blocks")}
    cur.execute("SELECT pg_get_serial_sequence(%s, 'id')", (f'"{settings.db.schema}"."extract_grids"',))
    sequence = cur.fetchone()[0]
    grants = [
        sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(schema),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role),
        sql.SQL("GRANT SELECT ON {}, {} TO {}").format(t["aois"], t["catalogue"], role),
        sql.SQL("GRANT UPDATE (status) ON {} TO {}").format(t["catalogue"], role),
        sql.SQL("GRANT SELECT, INSERT, UPDATE ON {} TO {}").format(t["extraction_runs"], role),
        sql.SQL("GRANT SELECT, INSERT, DELETE ON {} TO {}").format(t["extract_grids"], role),
        sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(t["extract_grid_blocks"], role),
        sql.SQL("GRANT INSERT ON {}, {} TO {}").format(t["sigs"], t["hists"], role),
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT SELECT ON TABLES TO {}").format(schema, role),
    ]
    if sequence:  # a name pg_get_serial_sequence quoted itself
        grants.append(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sql.SQL(sequence), role))
    grants += [sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(".").join([schema, sql.Identifier(name)]), role)
               for name in parcel_tables(cur, settings)]
    return grants


def apply(cur, settings: Settings) -> None:
    """Make the worker role and give it its privileges (in the caller's transaction)."""
    if not ensure_role(cur, settings):
        return
    for stmt in statements(cur, settings):
        cur.execute(stmt)
