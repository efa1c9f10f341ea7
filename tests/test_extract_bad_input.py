"""Bad input: each case gets a status naming the cause (or a one-line error for configuration),
and no rows are lost or half-written."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from rasterio import Affine
from rasterio.crs import CRS

from conftest import assert_one_line_error, run_cbm
from extract_helpers import Scene, add_scene, extract_env, init_db, make_world
from sandbox import synthetic


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("eodata"), s2_dates=(dt.datetime(2024, 6, 1, 10, 30, 31),),
                      with_s1=False, with_empty=False)


def broken_copy(dbenv, world, days: int, damage) -> tuple[int, Path]:
    """A copy of the good S2 product under a new name (a later date), damaged by `damage(safe)`."""
    good = world.scenes[0]
    when = good.obstime + dt.timedelta(days=days)
    ref = good.reference.replace("20240601T103031", when.strftime("%Y%m%dT%H%M%S"))
    path = good.path.rsplit("/", 1)[0] + "/" + ref
    safe = world.root / path[len("/eodata/"):]
    if not safe.exists():
        shutil.copytree(world.root / good.path[len("/eodata/"):], safe)
        damage(safe)
    obsid = add_scene(dbenv, Scene("s2", ref, when, path, good.bounds_utm, good.epsg, good.tile),
                      reference=ref, path=path)
    return obsid, safe


def run_state(dbenv, obsid):
    return dbenv.query("SELECT r.status, r.detail, c.status FROM extraction_runs r JOIN dias_catalogue c"
                       " ON c.id = r.obsid WHERE r.obsid = %s AND r.res = 10", (obsid,))[0]


def test_missing_band_and_corrupt_jp2_get_their_status(dbenv, world):
    init_db(dbenv, world)
    missing, _ = broken_copy(dbenv, world, 1, lambda safe: next(safe.rglob("*_B08_10m.jp2")).unlink())

    def truncate(safe):
        jp2 = next(safe.rglob("*_B04_10m.jp2"))
        jp2.write_bytes(jp2.read_bytes()[: jp2.stat().st_size // 2])

    def garbage(safe):
        next(safe.rglob("*_B03_10m.jp2")).write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + os.urandom(3000))

    truncated, _ = broken_copy(dbenv, world, 2, truncate)
    corrupt, _ = broken_copy(dbenv, world, 3, garbage)
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=extract_env(dbenv, world))
    assert proc.returncode == 0, proc.stderr
    status, detail, cat = run_state(dbenv, missing)
    assert (status, cat) == ("No band file", "No band file") and "B08" in detail and "R10m" in detail
    for obsid, band in ((truncated, "B04"), (corrupt, "B03")):
        status, detail, cat = run_state(dbenv, obsid)
        assert (status, cat) == ("Rio error", "Rio error") and f"_{band}_10m.jp2" in detail
    bad = (missing, truncated, corrupt)
    assert dbenv.query("SELECT count(*) FROM sigs WHERE obsid = ANY(%s)", (list(bad),)) == [(0,)]
    good = dbenv.query("SELECT id FROM dias_catalogue WHERE NOT (id = ANY(%s))", (list(bad),))[0][0]
    assert run_state(dbenv, good)[0] == "extracted"
    assert dbenv.query("SELECT count(*) FROM sigs WHERE obsid = %s", (good,))[0][0] > 0


def test_crs_without_rasterized_parcels_that_cannot_be_built(dbenv, world, tmp_path):
    init_db(dbenv, world)
    local = CRS.from_wkt('LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    vv = np.ones((20, 20), np.float32)
    path = synthetic.write_c6(world.root, dt.datetime(2024, 6, 3, 5, 40, 9), local, Affine(20, 0, 0, 0, -20, 400), vv, vv)
    s = world.scenes[0]
    obsid = add_scene(dbenv, Scene("c6", path.rsplit("/", 1)[1], dt.datetime(2024, 6, 3, 5, 40, 9), path, s.bounds_utm))
    proc = run_cbm("extract", "run", "--card", "c6", "--res", "20", env=extract_env(dbenv, world))
    assert proc.returncode == 0, proc.stderr
    status, detail = dbenv.query("SELECT status, detail FROM extraction_runs WHERE obsid = %s", (obsid,))[0]
    assert status == "Parcel SQL" and "cannot be reprojected" in detail
    assert dbenv.query("SELECT status FROM dias_catalogue WHERE id = %s", (obsid,)) == [("Parcel SQL",)]
    assert dbenv.query("SELECT count(*) FROM sigs") == [(0,)]


def test_empty_parcel_table_is_a_one_line_error(dbenv, world):
    init_db(dbenv, world, with_parcels=False)
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=extract_env(dbenv, world))
    assert_one_line_error(proc, "parcel table parcels is empty", "cbm parcels load", code=2)
    assert dbenv.query("SELECT count(*) FROM extraction_runs") == [(0,)]
    assert dbenv.query("SELECT DISTINCT status FROM dias_catalogue") == [("ingested",)]


@pytest.mark.parametrize("args,needles", [
    (("--card", "s2", "--res", "10", "--aoi", "nowhere"), ("AOI 'nowhere'", "cbm aoi add")),
    (("--card", "s2", "--res", "10", "--start", "2024-05-01", "--end", "2024-04-01"), ("--start", "before")),
    (("--card", "s2", "--res", "10", "--start", "May 1st"), ("--start", "YYYY-MM-DD")),
    (("--card", "bs", "--res", "20"), ("--res 20", "--res 10")),
    (("--card", "s2"), ("--res",)),
    (("--card", "s2", "--res", "10", "--parcels", "nope"), ("parcel table", "nope", "does not exist")),
])
def test_configuration_mistakes_are_one_line(dbenv, world, args, needles):
    init_db(dbenv, world)
    proc = run_cbm("extract", "run", *args, env=extract_env(dbenv, world))
    assert_one_line_error(proc, *needles, code=2)
    assert dbenv.query("SELECT count(*) FROM extraction_runs") == [(0,)]


@pytest.fixture
def full_tablespace(dbenv, tmp_path):
    """A PostgreSQL tablespace on a 1 MB tmpfs that is full (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    import tempfile

    mnt = Path(tempfile.mkdtemp(prefix="cbm-extract-full-"))  # the server's user must reach it
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cbm-extract-test", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    shutil.chown(mnt, "postgres", "postgres")
    name = f"cbm_extract_full_{dbenv.name}"
    conn = dbenv.conn()  # autocommit: tablespaces cannot be made inside a transaction
    try:
        conn.cursor().execute(f"CREATE TABLESPACE {name} LOCATION '{mnt}'")
        yield name, mnt
    finally:
        try:
            conn.cursor().execute("ALTER TABLE IF EXISTS extract_grid_blocks SET TABLESPACE pg_default")
            conn.cursor().execute(f"DROP TABLESPACE IF EXISTS {name}")
        finally:
            conn.close()
            subprocess.run(["umount", str(mnt)])
            mnt.rmdir()


def test_rasterization_store_disk_full(dbenv, world, full_tablespace):
    name, mnt = full_tablespace
    init_db(dbenv, world)
    dbenv.query(f"ALTER TABLE extract_grid_blocks SET TABLESPACE {name}")
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill the tmpfs to the last byte
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass
    env = extract_env(dbenv, world)
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=env)
    assert_one_line_error(proc, "rasterized parcels", "disk is full", "free space", code=1)
    assert dbenv.query("SELECT count(*) FROM extract_grids") == [(0,)]      # nothing half-stored
    assert dbenv.query("SELECT count(*) FROM sigs") == [(0,)]
    assert dbenv.query("SELECT status, attempts FROM extraction_runs") == [("ingested", 1)]  # given back
    filler.unlink()
    again = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=env)
    assert again.returncode == 0, again.stderr
    assert dbenv.query("SELECT status, attempts FROM extraction_runs") == [("extracted", 2)]


def test_database_without_the_extraction_tables(dbenv, world):
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=extract_env(dbenv, world))
    assert_one_line_error(proc, "is missing", "cbm db init", code=2)


def test_retry_requeues_exactly_the_scenes_it_counted(dbenv, world):
    """A band file that was missing arrives later: `cbm extract retry --status 'No band file'` counts the
    runs, re-queues exactly those (the Rio errors stay), and the next worker extracts the scene."""
    init_db(dbenv, world)
    missing, safe = broken_copy(dbenv, world, 4, lambda safe: next(safe.rglob("*_B08_10m.jp2")).unlink())
    corrupt, _ = broken_copy(dbenv, world, 5, lambda safe: next(safe.rglob("*_B03_10m.jp2")).write_bytes(b"x" * 64))
    env = extract_env(dbenv, world)
    proc = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=env)
    assert proc.returncode == 0, proc.stderr
    assert (run_state(dbenv, missing)[0], run_state(dbenv, corrupt)[0]) == ("No band file", "Rio error")

    dry = run_cbm("extract", "retry", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "s2 run 10: 1 scene(s) in status 'No band file'" in dry.stdout
    assert "s2 run 10: 1 scene(s) in status 'Rio error'" in dry.stdout
    assert "2 scene run(s) to re-queue" in dry.stdout
    assert (run_state(dbenv, missing)[0], run_state(dbenv, corrupt)[0]) == ("No band file", "Rio error")

    good_safe = world.root / world.scenes[0].path[len("/eodata/"):]
    good_b08 = next(good_safe.rglob("*_B08_10m.jp2"))
    shutil.copy(good_b08, safe / good_b08.relative_to(good_safe))   # the file arrives
    proc = run_cbm("extract", "retry", "--status", "No band file", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "re-queued 1 scene run(s)" in proc.stdout
    status, detail, cat = run_state(dbenv, missing)
    assert (status, cat) == ("ingested", "ingested") and detail.startswith("retried: No band file")
    assert run_state(dbenv, corrupt)[0] == "Rio error"

    proc = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=env)
    assert proc.returncode == 0, proc.stderr
    assert run_state(dbenv, missing)[0] == "extracted" and run_state(dbenv, corrupt)[0] == "Rio error"
    good = world.scenes[0]
    good_id = dbenv.query("SELECT id FROM dias_catalogue WHERE reference = %s", (good.reference,))[0][0]
    assert dbenv.query("SELECT count(*) FROM sigs WHERE obsid = %s", (missing,)) == \
        dbenv.query("SELECT count(*) FROM sigs WHERE obsid = %s", (good_id,))

    assert_one_line_error(run_cbm("extract", "retry", "--status", "extracted", env=env), "--status", code=2)

