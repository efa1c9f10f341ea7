"""The workers' database role (extractor/grants.py, made by `cbm db init`): it does a real extraction
and nothing else. Real PostGIS; the role logs in with the password of db.worker_password_file."""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest

from conftest import assert_one_line_error, run_cbm
from extract_helpers import PARCEL_SRID, extract_env, init_db, make_world, parcels

WORKER = "cbm_worker"


@pytest.fixture
def worker(dbenv, tmp_path):
    """`cbm db init` with a worker password file; `.connect()` logs in as the worker role."""
    password = tmp_path / "worker_password"
    password.write_text("w0rker-s3cret\n")
    password.chmod(0o600)
    env = {**dbenv, "CBM_DB_WORKER_PASSWORD_FILE": str(password)}
    proc = run_cbm("db", "init", env=env)
    assert proc.returncode == 0, proc.stderr

    class Worker:
        init_env = env
        password_file = password

        @staticmethod
        def connect():
            conn = psycopg2.connect(host=dbenv["PGHOST"], port=dbenv["PGPORT"], dbname=dbenv["PGDATABASE"],
                                    user=WORKER, password="w0rker-s3cret", connect_timeout=10)
            conn.autocommit = True
            return conn

    return Worker


def refused(conn, statement: str):
    with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege) as err:
        cur.execute(statement)
    return str(err.value)


def test_the_worker_role_can_do_nothing_but_its_work(dbenv, worker):
    dbenv.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint) VALUES"
                " (now(), 'S2A_X', '2A', 's2', ST_Multi(ST_MakeEnvelope(0, 0, 1, 1, 4326)))")
    dbenv.query("CREATE SCHEMA elsewhere; CREATE TABLE elsewhere.secrets (x text); INSERT INTO elsewhere.secrets VALUES ('no')")
    conn = worker.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == (False, False, False, False)
            cur.execute("SELECT count(*) FROM dias_catalogue")          # what it reads
            assert cur.fetchone() == (1,)
        assert "permission denied for schema public" in refused(conn, "CREATE TABLE mine (x int)")
        assert "permission denied for schema elsewhere" in refused(conn, "SELECT * FROM elsewhere.secrets")
        assert "pg_execute_server_program" in refused(conn, "COPY (SELECT 1) TO PROGRAM 'id'")
        refused(conn, "COPY dias_catalogue (reference) TO '/tmp/cbm-grants-test'")
        assert "dias_catalogue" in refused(conn, "DELETE FROM dias_catalogue")
        refused(conn, "UPDATE dias_catalogue SET reference = 'x'")      # only the status column
        refused(conn, "DELETE FROM sigs")
        refused(conn, "TRUNCATE hists")
        refused(conn, "SELECT * FROM sigs")                              # it writes results, never reads them
        refused(conn, "CREATE ROLE other")
    finally:
        conn.close()
    assert dbenv.query("SELECT count(*) FROM dias_catalogue") == [(1,)]


def test_the_worker_role_runs_a_real_extraction(dbenv, worker, tmp_path):
    world = make_world(tmp_path / "eodata", with_s1=False)
    init_db(dbenv, world)       # the parcel table is made after `db init`: readable by default privileges
    as_worker = {**extract_env(dbenv, world), "PGUSER": WORKER, "CBM_DB_PASSWORD_FILE": str(worker.password_file),
                 "PGPASSFILE": str(tmp_path / "none")}
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "-1", env=as_worker)
    assert proc.returncode == 0, proc.stderr
    # the parcel table is loaded again (a new table): the worker replaces the stale 20 m grid it stored
    dbenv.query("ALTER TABLE parcels RENAME TO parcels_old")
    dbenv.query("CREATE TABLE parcels AS SELECT * FROM parcels_old; DROP TABLE parcels_old;"
                " ALTER TABLE parcels ADD PRIMARY KEY (ogc_fid)")
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "20", env=as_worker)
    assert proc.returncode == 0, proc.stderr
    assert dbenv.query("SELECT count(*) FROM extract_grids WHERE res_x = 20") == [(1,)]
    statuses = dict(dbenv.query("SELECT c.tile || ':' || r.res || ':' || c.id, r.status FROM extraction_runs r"
                                " JOIN dias_catalogue c ON c.id = r.obsid"))
    assert set(statuses.values()) <= {"extracted", "No parcels"}, statuses
    assert sorted(k.rsplit(":", 1)[0] for k, v in statuses.items() if v == "extracted") == \
        ["31UFS:-1", "31UFS:-1", "31UFS:20", "31UFS:20"]
    assert dbenv.query("SELECT count(DISTINCT pid), count(DISTINCT obsid) FROM hists")[0][1] == 2
    pids, bands, scenes = dbenv.query("SELECT count(DISTINCT pid), count(DISTINCT band), count(DISTINCT obsid)"
                                      " FROM sigs")[0]
    assert (bands, scenes) == (6, 2) and 0 < pids <= len(parcels())
    assert dbenv.query("SELECT count(*) FROM sigs GROUP BY pid, obsid, band HAVING count(*) > 1") == []


def privileges(dbenv) -> list:
    """What the worker role may do on every table, sequence and schema, its attributes and default ACLs."""
    return dbenv.query(
        "SELECT 'rel', c.relname, p, has_table_privilege(%(r)s, c.oid, p)"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,"
        "       unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p"
        "  WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v')"
        " UNION ALL SELECT 'seq', c.relname, 'USAGE', has_sequence_privilege(%(r)s, c.oid, 'USAGE')"
        "  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'S'"
        " UNION ALL SELECT 'col', 'dias_catalogue', a.attname, has_column_privilege(%(r)s, 'dias_catalogue', a.attname, 'UPDATE')"
        "  FROM pg_attribute a WHERE a.attrelid = 'dias_catalogue'::regclass AND a.attnum > 0 AND NOT a.attisdropped"
        " UNION ALL SELECT 'schema', 'public', 'CREATE', has_schema_privilege(%(r)s, 'public', 'CREATE')"
        " UNION ALL SELECT 'role', rolname, 'login', rolcanlogin FROM pg_roles WHERE rolname = %(r)s"
        " UNION ALL SELECT 'default', coalesce(defaclnamespace::regnamespace::text, ''), defaclobjtype::text,"
        "  defaclacl::text LIKE '%%' || %(r)s || '=r/%%' FROM pg_default_acl"
        " ORDER BY 1, 2, 3", {"r": WORKER})


def test_db_init_again_keeps_the_role_and_its_grants(dbenv, worker):
    dbenv.query(f"CREATE TABLE dk_parcels (ogc_fid serial PRIMARY KEY, wkb_geometry geometry(MultiPolygon, {PARCEL_SRID}))")
    before = privileges(dbenv)
    granted = {(kind, name, what) for kind, name, what, ok in before if ok}
    assert {("rel", "dk_parcels", "SELECT"), ("rel", "sigs", "INSERT"), ("rel", "hists", "INSERT"),
            ("rel", "extraction_runs", "UPDATE"), ("rel", "extract_grids", "DELETE"),
            ("seq", "extract_grids_id_seq", "USAGE"), ("col", "dias_catalogue", "status"),
            ("role", WORKER, "login"), ("default", "public", "r")} <= granted
    assert not {g for g in granted if g[2] in ("DELETE", "TRUNCATE") and g[1] != "extract_grids"}
    assert ("schema", "public", "CREATE") not in granted
    for env in (worker.init_env, dict(dbenv)):      # with and without the password file
        proc = run_cbm("db", "init", env=env)
        assert proc.returncode == 0, proc.stderr
        assert privileges(dbenv) == before
    worker.connect().close()                         # its password still works


def test_a_bad_worker_role_name_is_one_line(dbenv):
    proc = run_cbm("db", "init", env={**dbenv, "CBM_DB_WORKER_USER": "pg_monitor"})
    assert_one_line_error(proc, "db.worker_user", "pg_monitor", code=2)
