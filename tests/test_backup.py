"""`cbm db backup` / `cbm db restore` against the real throwaway PostGIS: a round trip into an empty
database gives the same rows (counts and checksums), bad archives are refused on one line, a failed
restore changes nothing, and the password never shows up in argv or output."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import psycopg2
import pytest

from conftest import assert_one_line_error, run_cbm
from extractor import settings as settings_mod
from provision.ops import backup, deployment

TABLES = ("aois", "dias_catalogue", "sigs", "hists", "extraction_runs")


def populate(dbenv, scenes: int = 4, parcels: int = 7) -> None:
    """The CbM tables with a few scenes, their runs and per-parcel signatures/histograms."""
    proc = run_cbm("db", "init")
    assert proc.returncode == 0, proc.stderr
    dbenv.query("INSERT INTO aois VALUES ('dk', ST_GeomFromText('POLYGON((9 55,10 55,10 56,9 56,9 55))', 4326))")
    for i in range(scenes):
        (obsid,), = dbenv.query(
            "INSERT INTO dias_catalogue (obstime, reference, sensor, card, status, footprint)"
            " VALUES (%s, %s, 's2', 's2', 'extracted',"
            " ST_Multi(ST_GeomFromText('POLYGON((9 55,10 55,10 56,9 56,9 55))', 4326))) RETURNING id",
            (f"2024-05-{i + 1:02d}", f"S2A_MSIL2A_2024050{i}_T32UNG"))
        dbenv.query("INSERT INTO extraction_runs (obsid, res, status, rows, finished_at)"
                    " VALUES (%s, 10, 'extracted', %s, now())", (obsid, parcels * 4))
        for pid in range(parcels):
            for band in ("B02", "B03", "B04", "B08"):
                dbenv.query("INSERT INTO sigs VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                            (pid, obsid, band, 10 + pid, 0.5 * pid + i, 0.1, 0, 100, 25, 50, 75))
            dbenv.query("INSERT INTO hists VALUES (%s, %s, %s)",
                        (pid, obsid, json.dumps({"4": pid + 1, "8": i + 2})))


def fingerprint(conn_kwargs: dict) -> dict:
    """Row counts of every CbM table and a checksum of sigs and hists (order-independent)."""
    with psycopg2.connect(**conn_kwargs) as conn, conn.cursor() as cur:
        out = {}
        for t in TABLES:
            cur.execute(f"SELECT count(*) FROM {t}")
            out[t] = cur.fetchone()[0]
        for t in ("sigs", "hists"):
            cur.execute(f"SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM {t} x")
            out[f"{t}_md5"] = cur.fetchone()[0]
    conn.close()
    return out


def kwargs_of(env: dict) -> dict:
    return {"host": env["PGHOST"], "port": env["PGPORT"], "user": env["PGUSER"], "dbname": env["PGDATABASE"],
            "passfile": env["PGPASSFILE"]}


@pytest.fixture
def other_db(postgis):
    """A second database with nothing in it (not even PostGIS): the restore target."""
    name = f"r{os.getpid()}_{id(postgis) % 10000}"
    postgis.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    postgis.psql(f"CREATE DATABASE {name} TEMPLATE template0")
    yield postgis.env(name)
    postgis.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_backup_then_restore_into_an_empty_database_gives_the_same_rows(dbenv, other_db, postgis, tmp_path):
    populate(dbenv)
    before = fingerprint(kwargs_of(dbenv))
    assert before["sigs"] == 4 * 7 * 4 and before["hists"] == 4 * 7 and before["sigs_md5"]

    out = tmp_path / "cbm.dump"
    proc = run_cbm("db", "backup", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout and dbenv["PGDATABASE"] in proc.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes()[:5] == b"PGDMP"
    assert not list(tmp_path.glob(".*partial"))

    # Restore with the password from db.password_file (the deployment way: a 0600 pgpass is made for it).
    env = {**other_db, "PGPASSFILE": str(tmp_path / "no-such-pgpass"), "CBM_DB_PASSWORD_FILE": str(postgis.root / "pwfile")}
    proc = run_cbm("db", "restore", str(out), "--yes", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "restore:" in proc.stdout and other_db["PGDATABASE"] in proc.stdout
    assert fingerprint(kwargs_of(other_db)) == before
    for text in (proc.stdout, proc.stderr):
        assert postgis.password not in text

    # Restoring again over the restored data (--clean) converges to the same rows, not doubles.
    proc = run_cbm("db", "restore", str(out), "--yes", env=other_db)
    assert proc.returncode == 0, proc.stderr
    assert fingerprint(kwargs_of(other_db)) == before


def test_backup_default_folder_is_private_and_timestamped(dbenv, tmp_path):
    populate(dbenv, scenes=1, parcels=1)
    state_home = tmp_path / "state"
    proc = run_cbm("db", "backup", env={"XDG_STATE_HOME": str(state_home)})
    assert proc.returncode == 0, proc.stderr
    folder = state_home / "cbm" / "backups"
    dumps = list(folder.glob("*.dump"))
    assert len(dumps) == 1 and dumps[0].name.endswith("Z.dump"), dumps
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
    assert str(dumps[0]) in proc.stdout
    # --out never overwrites a file
    proc = run_cbm("db", "backup", "--out", str(dumps[0]))
    assert_one_line_error(proc, str(dumps[0]), "exists", code=2)


def test_restore_refuses_files_that_are_not_pg_dump_archives(dbenv, tmp_path):
    populate(dbenv, scenes=1, parcels=2)
    before = fingerprint(kwargs_of(dbenv))
    junk = tmp_path / "junk.dump"
    junk.write_bytes(os.urandom(4096))
    assert_one_line_error(run_cbm("db", "restore", str(junk), "--yes"), str(junk), "not a pg_dump archive", code=2)
    sql = tmp_path / "plain.sql"
    sql.write_text("DROP TABLE sigs;\n")
    assert_one_line_error(run_cbm("db", "restore", str(sql), "--yes"), "not a pg_dump archive", code=2)
    assert_one_line_error(run_cbm("db", "restore", str(tmp_path / "missing.dump"), "--yes"), "no such file", code=2)
    # A real archive cut short: refused on one line (damaged TOC) or rolled back as a whole.
    good = tmp_path / "good.dump"
    assert run_cbm("db", "backup", "--out", str(good)).returncode == 0
    data = good.read_bytes()
    for cut in (len(data) // 3, len(data) - 200):
        broken = tmp_path / f"cut{cut}.dump"
        broken.write_bytes(data[:cut])
        proc = run_cbm("db", "restore", str(broken), "--yes")
        assert_one_line_error(proc, str(broken))
        assert fingerprint(kwargs_of(dbenv)) == before
    assert fingerprint(kwargs_of(dbenv)) == before


def test_restore_asks_first_and_changes_nothing_without_an_answer(dbenv, tmp_path):
    populate(dbenv, scenes=1, parcels=2)
    dump = tmp_path / "a.dump"
    assert run_cbm("db", "backup", "--out", str(dump)).returncode == 0
    dbenv.query("DELETE FROM hists")
    proc = run_cbm("db", "restore", str(dump), input="")
    assert_one_line_error(proc, "--yes", code=2)
    assert dbenv.query("SELECT count(*) FROM hists")[0][0] == 0


def test_unreachable_database_is_one_line_and_leaves_no_file(dbenv, tmp_path):
    from sandbox.localdb import free_port

    out = tmp_path / "x.dump"
    proc = run_cbm("db", "backup", "--out", str(out), env={"PGPORT": str(free_port())})
    assert_one_line_error(proc, "cannot connect", code=1)
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_password_only_in_a_private_pgpass_never_argv_or_pgpassword(postgis, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "inherited-should-go")
    pwfile = postgis.root / "pwfile"
    settings = settings_mod.load(None, environ={"CBM_DB_HOST": "127.0.0.1", "CBM_DB_PORT": str(postgis.port),
                                                "CBM_DB_USER": "postgres", "CBM_DB_PASSWORD_FILE": str(pwfile)})
    with deployment.libpq_environment(settings) as env:
        passfile = Path(env["PGPASSFILE"])
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        assert postgis.password in passfile.read_text()
        assert "PGPASSWORD" not in env
        assert postgis.password not in " ".join(v for k, v in env.items() if k != "PGPASSFILE" and k.startswith("PG"))
    assert not passfile.exists()
    for argv in (backup.dump_command(tmp_path / "x.dump"), backup.restore_command(tmp_path / "x.dump", "postgres")):
        assert not any(postgis.password in a for a in argv)
        assert not any("password=" in a for a in argv)
        assert "--no-password" in argv
