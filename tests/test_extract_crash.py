"""A worker killed in the middle of writing leaves no rows; its scene is taken back after the lease
and ends equal to an undisturbed run. A database lost mid-scene: one line, nothing written, the
scene given back without using an attempt. A scene over extract.scene_timeout is given back (the
attempt counts) and the worker goes on; a bad extract.scene_timeout is a one-line error."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading

import psycopg2
import pytest

from conftest import assert_one_line_error, run_cbm, wait_for
from extract_helpers import Scene, add_scene, extract_env, init_db, make_world

LOCK = 424242


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("eodata"), s2_dates=(dt.datetime(2024, 5, 1, 10, 30, 31),),
                      with_s1=False, with_empty=False)


def setup_two_scenes(dbenv, world):
    """Scene A (older) and B (same files, later): B is the undisturbed twin of A."""
    init_db(dbenv, world)
    a = world.scenes[0]
    when = a.obstime + dt.timedelta(days=1)
    add_scene(dbenv, Scene("s2", a.reference, when, a.path, a.bounds_utm, a.epsg, a.tile),
              reference=a.reference.replace("20240501T103031", when.strftime("%Y%m%dT%H%M%S")))
    ids = [r[0] for r in dbenv.query("SELECT id FROM dias_catalogue ORDER BY obstime")]
    return ids


def block_sigs_copy(holder):
    """COPY into sigs stops after writing its rows (before commit) while `holder` holds the lock."""
    with holder.cursor() as cur:
        cur.execute("CREATE FUNCTION hold_copy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                    f" PERFORM pg_advisory_lock({LOCK}); PERFORM pg_advisory_unlock({LOCK}); RETURN NULL; END $$")
        cur.execute("CREATE TRIGGER hold_copy AFTER INSERT ON sigs FOR EACH STATEMENT EXECUTE FUNCTION hold_copy()")
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK,))


def copy_waiting(dbenv):
    rows = dbenv.query("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'"
                       " AND query LIKE 'COPY%%'")
    return rows[0][0] if rows else None


def release(holder, dbenv, backend_pid=None):
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
    if backend_pid:
        wait_for(lambda: not dbenv.query("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend_pid,)),
                 what="the killed worker's session to end")
    with holder.cursor() as cur:
        cur.execute("DROP TRIGGER hold_copy ON sigs")


def sigs_of(dbenv, obsid):
    return sorted(dbenv.query("SELECT pid, band, count, mean, std, min, max, p25, p50, p75 FROM sigs"
                              " WHERE obsid = %s", (obsid,)))


def test_sigkill_mid_write_then_lease_takeover(dbenv, world):
    a, b = setup_two_scenes(dbenv, world)
    env = {**os.environ, **extract_env(dbenv, world, lease=2, poll=0.2)}
    holder = dbenv.conn()
    block_sigs_copy(holder)
    first = subprocess.Popen([sys.executable, "-m", "cbm", "extract", "run", "--card", "s2", "--res", "10"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    backend = wait_for(lambda: copy_waiting(dbenv), what="the worker to be inside COPY")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    release(holder, dbenv, backend)
    assert dbenv.query("SELECT count(*) FROM sigs") == [(0,)]
    assert dbenv.query("SELECT status, attempts FROM extraction_runs WHERE obsid = %s", (a,)) == [("inprogress", 1)]
    second = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=env)
    assert second.returncode == 0, second.stderr
    assert dbenv.query("SELECT obsid, status, attempts FROM extraction_runs ORDER BY obsid") == [
        (a, "extracted", 2), (b, "extracted", 1)]
    rows_a, rows_b = sigs_of(dbenv, a), sigs_of(dbenv, b)
    assert rows_a and rows_a == rows_b


def test_scene_that_keeps_killing_workers_gets_max_attempts(dbenv, world):
    a, b = setup_two_scenes(dbenv, world)
    env = {**os.environ, **extract_env(dbenv, world, lease=1, poll=0.2, max_attempts=1)}
    holder = dbenv.conn()
    block_sigs_copy(holder)
    first = subprocess.Popen([sys.executable, "-m", "cbm", "extract", "run", "--card", "s2", "--res", "10"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    backend = wait_for(lambda: copy_waiting(dbenv), what="the worker to be inside COPY")
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    release(holder, dbenv, backend)
    second = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=env)
    assert second.returncode == 0, second.stderr
    assert "Max attempts" in second.stdout
    status = dict(dbenv.query("SELECT id, status FROM dias_catalogue"))
    assert status == {a: "Max attempts", b: "ingested"}  # b: its -1 and 20 m runs are still to do
    assert dbenv.query("SELECT obsid, status FROM extraction_runs ORDER BY obsid") == [
        (a, "Max attempts"), (b, "extracted")]
    detail = dbenv.query("SELECT detail FROM extraction_runs WHERE obsid = %s", (a,))[0][0]
    assert "claimed 1 times" in detail
    assert sigs_of(dbenv, a) == []


def test_database_lost_mid_scene_then_back(dbenv, world):
    """The worker's connection is cut inside COPY and the database refuses connections for a while
    (as while PostGIS restarts): the worker waits, reconnects and finishes; nothing of the cut
    scene was written twice."""
    a, b = setup_two_scenes(dbenv, world)
    env = {**os.environ, **extract_env(dbenv, world, lease=2, poll=0.2, backoff=0.2)}
    holder = dbenv.conn()
    block_sigs_copy(holder)
    worker = subprocess.Popen([sys.executable, "-m", "cbm", "extract", "run", "--card", "s2", "--res", "10"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout), daemon=True)
    reader.start()
    backend = wait_for(lambda: copy_waiting(dbenv), what="the worker to be inside COPY")
    admin = psycopg2.connect(host=dbenv["PGHOST"], port=dbenv["PGPORT"], user=dbenv["PGUSER"], dbname="postgres",
                             passfile=dbenv["PGPASSFILE"])
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"ALTER DATABASE {dbenv.name} ALLOW_CONNECTIONS false")
        cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
    try:
        wait_for(lambda: any(line.startswith("waiting") and "database" in line for line in lines),
                 what="the worker to wait for the database")
        assert worker.poll() is None, worker.stderr.read()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"ALTER DATABASE {dbenv.name} ALLOW_CONNECTIONS true")
        admin.close()
    release(holder, dbenv)
    worker.wait(timeout=120)
    reader.join(timeout=10)
    assert worker.returncode == 0, worker.stderr.read()
    out = "".join(lines)
    assert "lost the database" in out and "answers again" in out, out
    assert dbenv.query("SELECT count(*) FROM extraction_runs WHERE status = 'extracted'") == [(2,)]
    assert dbenv.query("SELECT DISTINCT attempts FROM extraction_runs") == [(1,)]  # given back, not counted
    assert sigs_of(dbenv, a) == sigs_of(dbenv, b) and sigs_of(dbenv, a)
    assert dbenv.query("SELECT count(*) FROM sigs GROUP BY pid, obsid, band HAVING count(*) > 1") == []


def test_scene_over_its_time_bound_is_given_back_and_the_worker_goes_on(dbenv, world):
    """The worker is held in the middle of scene A (its grid lookup waits on a table lock) until
    extract.scene_timeout has passed: A is given back with its attempt counted, nothing written;
    the worker goes on, takes A again and B, and both end equal."""
    a, b = setup_two_scenes(dbenv, world)
    env = {**os.environ, **extract_env(dbenv, world, scene_timeout=2, max_attempts=2)}
    holder = dbenv.conn()
    holder.autocommit = False
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE extract_grids IN ACCESS EXCLUSIVE MODE")
    worker = subprocess.Popen([sys.executable, "-m", "cbm", "extract", "run", "--card", "s2", "--res", "10"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: dbenv.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                     " AND query LIKE '%%extract_grids%%'"), what="the worker to wait in scene A")
        wait_for(lambda: dbenv.query("SELECT claimed_at < now() - interval '2 s' FROM extraction_runs")[0][0],
                 what="scene A to pass its time bound")
    finally:
        holder.rollback()
        holder.close()
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    ref = dbenv.query("SELECT reference FROM dias_catalogue WHERE id = %s", (a,))[0][0]
    assert f"scene {a} {ref}: given back, the scene took longer than extract.scene_timeout (2 s) " \
           "(attempt 1 of 2)" in out, out
    assert dbenv.query("SELECT obsid, status, attempts FROM extraction_runs ORDER BY obsid") == [
        (a, "extracted", 2), (b, "extracted", 1)]
    assert sigs_of(dbenv, a) == sigs_of(dbenv, b) and sigs_of(dbenv, a)
    assert dbenv.query("SELECT count(*) FROM sigs GROUP BY pid, obsid, band HAVING count(*) > 1") == []


def test_bad_scene_timeout_is_one_line(dbenv, world):
    env = extract_env(dbenv, world)
    for value in ("0", "inf", "soon"):
        proc = subprocess.run([sys.executable, "-m", "extractor.extract", "run", "--card", "s2", "--res", "10"],
                              env={**os.environ, **env, "CBM_EXTRACT_SCENE_TIMEOUT": value}, capture_output=True,
                              text=True, timeout=120)
        assert_one_line_error(proc, "extract.scene_timeout", value, code=2)
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "10", env={**env, "CBM_EXTRACT_SCENE_TIMEOUT": "0"})
    assert_one_line_error(proc, "extract.scene_timeout", "positive number of seconds", code=2)
