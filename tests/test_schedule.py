"""The continuous mode (`cbm schedule`, extractor/schedule).

Here, on a real PostGIS and a folder of generated products: the job's loop (`python -m extractor.schedule
loop`, what the swarm service runs) runs when its time comes and when asked, syncs the catalog stand-in
and extracts only what is new, never two runs at once (the lock), records a failed run with its log, and
`cbm status` shows it. On the shared live deployment: `cbm schedule` installs the job on the manager,
`--run-now` picks up a product published after the first run and extracts only it, into the rows
`cbm extract swarm` makes of it, `--off` removes it.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
import urllib.parse

import psycopg2
import pytest
import yaml
from rasterio.warp import transform_bounds

from conftest import PARCEL_SAMPLES, REPO, assert_one_line_error, run_cbm, wait_for
from extract_helpers import EPSG, World, extract_env, init_db, make_world
from live import SANDBOX_SPEC

# the second S2 scene is published late: sensed yesterday, within the schedule's lookback of 2 days
S2_DATES = (dt.datetime(2024, 3, 1, 10, 30, 31),
            dt.datetime.combine(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1), dt.time(10, 30, 31)))
PARCELS = PARCEL_SAMPLES / "dk_marker_2026" / "Marker_2026.shp"
SIGS = ("SELECT s.pid, s.band, s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75"
        " FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid")
HISTS = "SELECT h.pid, h.hist::text FROM hists h JOIN dias_catalogue c ON c.id = h.obsid"
PTYPES = {"s2": ("S2MSI2A", "Sentinel2"), "bs": ("CARD-BS", "Sentinel1"), "c6": ("CARD-COH6", "Sentinel1")}


def feature(scene) -> tuple[str, dict]:
    """The stand-in catalog's feature of a generated scene: (collection, feature)."""
    w, s, e, n = transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *scene.bounds_utm)
    ptype, collection = PTYPES[scene.card]
    when = scene.obstime.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return collection, {"type": "Feature", "id": scene.reference, "properties": {
        "title": scene.reference, "productIdentifier": scene.path, "startDate": when, "completionDate": when,
        "productType": ptype, "platform": scene.reference[:3], "processingBaseline": 5.1 if scene.card == "s2" else None},
        "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}}


def runs(dbenv) -> list[dict]:
    cols = ("id", "trigger", "outcome", "products", "scenes", "failed", "log", "detail", "started_at", "finished_at")
    return [dict(zip(cols, r)) for r in dbenv.query(f"SELECT {', '.join(cols)} FROM schedule_runs ORDER BY id")]


def finished(dbenv, count: int):
    rows = runs(dbenv)
    return rows if len(rows) >= count and all(r["finished_at"] for r in rows) else None


def ask(dbenv) -> None:
    """What `cbm schedule --run-now` does to the database (provision/ops/schedule.run_now)."""
    dbenv.query("UPDATE schedule SET requested_at = now(); NOTIFY cbm_schedule")


@pytest.mark.parametrize("args, needle", [
    ([], "name the deployment"),
    (["x.yml", "--every", "1d"], "--every needs --cards"),
    (["x.yml", "--off", "--run-now"], "one of them"),
    (["x.yml", "--cards", "s2", "--every", "1x"], "--every '1x' is not a duration"),
    (["x.yml", "--cards", "s2", "--every", "0m"], "at least 1 min"),
    (["x.yml", "--cards", "s2,s3", "--every", "1d"], "--cards 's2,s3'"),
    (["x.yml", "--cards", "s2", "--every", "1d", "--lookback", "ten days"], "--lookback 'ten days'"),
    (["x.yml", "--run-now", "--check"], "--check goes with"),
])
def test_bad_arguments_are_one_line(args, needle, tmp_path):
    proc = run_cbm("schedule", *args, env={"CBM_DEPLOYMENT": "", "XDG_STATE_HOME": str(tmp_path)})
    assert_one_line_error(proc, needle, code=2)


def test_a_volume_too_small_for_the_job_is_one_line(tmp_path):
    data = yaml.safe_load(SANDBOX_SPEC.read_text())
    data["volume"] = {"size": 2}
    spec = tmp_path / "deployment.yml"
    spec.write_text(yaml.safe_dump(data))
    proc = run_cbm("schedule", str(spec), "--cards", "s2", "--every", "1d",
                   env={"CBM_DEPLOYMENT": "", "XDG_STATE_HOME": str(tmp_path)})
    assert_one_line_error(proc, f"{spec}: key 'volume.size': 2 GB is too small for the continuous mode's job",
                          "set it to at least 8", code=2)


@pytest.fixture
def world(dbenv, tmp_path):
    w = make_world(tmp_path / "eodata", s2_dates=S2_DATES, with_s1=True, with_empty=False)
    init_db(dbenv, World(w.root, []))   # the parcels and the AOI; the catalogue is the job's to fill
    return w


def test_the_job_runs_on_time_and_on_request_extracting_only_what_is_new(dbenv, world, tmp_path):
    from extractor import schedule, settings
    from sandbox.catalog_replay import CatalogReplay

    late = next(s for s in world.scenes if s.card == "s2" and s.obstime == S2_DATES[1])
    features: dict[str, list] = {"Sentinel2": [], "Sentinel1": []}
    for scene in world.scenes:
        if scene is not late:
            collection, f = feature(scene)
            features[collection].append(f)
    logs = tmp_path / "logs"
    logs.mkdir()
    with CatalogReplay(features=features) as cat:
        env = {**extract_env(dbenv, world), "CBM_CATALOG_URL": cat.url, "CBM_CATALOG_RETRIES": "0",
               "CBM_EXTRACT_POLL": "0.2"}
        conn = dbenv.conn()
        s = settings.load(None, environ=env)
        schedule.write(conn, s, schedule.Schedule(
            cards=schedule.ordered_cards("c6,s2,bs"), every=dt.timedelta(days=1), lookback=dt.timedelta(days=2),
            aoi="site", parcels="parcels", start=None, synced_to=dt.date(2024, 3, 2)))
        dbenv.query("UPDATE schedule SET next_at = now() + interval '1 second'")   # the timer's first run
        job = subprocess.Popen([sys.executable, "-m", "extractor.schedule", "loop", "--log-dir", str(logs)],
                               env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            first = wait_for(lambda: finished(dbenv, 1), "the timer's run", timeout=300, interval=0.2)[0]
            assert (first["trigger"], first["outcome"], first["products"]) == ("timer", "ok", 3), first
            assert (first["scenes"], first["failed"]) == (5, 0), first   # s2: SCL, 10 m, 20 m; bs; c6
            next_at = dbenv.query("SELECT next_at - now() FROM schedule")[0][0]
            assert dt.timedelta(hours=23) < next_at <= dt.timedelta(days=1)
            order = [line.split(": card ")[1].split(" (")[0] for line in open(first["log"]) if ": card " in line]
            assert order == ["s2 run -1", "s2 run 10", "s2 run 20", "bs run 10", "c6 run 20"], order
            before = dbenv.query("SELECT obsid, res, finished_at FROM extraction_runs ORDER BY 1, 2")

            # a product published late: the next run syncs and extracts it, and only it
            collection, f = feature(late)
            cat.features[collection].append(f)
            ask(dbenv)
            second = wait_for(lambda: finished(dbenv, 2), "the requested run", timeout=300, interval=0.2)[-1]
            assert (second["trigger"], second["outcome"], second["products"], second["scenes"]) == \
                ("request", "ok", 1, 3), second
            new_id = dbenv.query("SELECT id FROM dias_catalogue WHERE reference = %s", (late.reference,))[0][0]
            after = dbenv.query("SELECT obsid, res, finished_at FROM extraction_runs ORDER BY 1, 2")
            assert [r for r in after if r[0] != new_id] == before
            assert sorted(r[1] for r in after if r[0] == new_id) == [-1, 10, 20]
            assert dbenv.query("SELECT count(*) FROM sigs WHERE obsid = %s", (new_id,))[0][0] > 0

            # never two runs at once: while the lock is held, a run is skipped and does nothing
            holder = psycopg2.connect(**{"host": dbenv["PGHOST"], "port": dbenv["PGPORT"], "user": dbenv["PGUSER"],
                                         "dbname": dbenv["PGDATABASE"], "passfile": dbenv["PGPASSFILE"]})
            with holder.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (schedule.LOCK_KEY,))
            ask(dbenv)
            third = wait_for(lambda: finished(dbenv, 3), "the run asked for while locked", timeout=120)[-1]
            holder.close()
            assert third["outcome"] == "skipped" and "another run" in third["detail"], third

            # a failed run is recorded, with why and its log
            cat.fault = "500"
            ask(dbenv)
            fourth = wait_for(lambda: finished(dbenv, 4), "the run whose catalog fails", timeout=120)[-1]
            assert fourth["outcome"] == "failed" and "HTTP 500" in fourth["detail"], fourth
            assert "HTTP 500" in open(fourth["log"]).read()
        finally:
            job.send_signal(signal.SIGTERM)   # as `docker service rm` stops it
            out, _ = job.communicate(timeout=60)
        conn.close()
    assert job.returncode != 0 and "Traceback" not in out, out

    proc = run_cbm("status", env=dbenv)
    assert "continuous mode" in proc.stdout, proc.stdout
    assert "failed: catalog request failed with HTTP 500" in proc.stdout and fourth["log"] in proc.stdout, proc.stdout
    assert "cards s2, bs, c6 every 1d" in proc.stdout, proc.stdout


@pytest.mark.docker
@pytest.mark.timeout(2400)   # the extractor image copied to the manager, two runs
def test_the_job_on_the_deployment_extracts_a_product_published_after_its_first_run(live_deployment):
    from live import generated_products
    from sandbox.catalog_replay import CatalogReplay

    dep = live_deployment
    spec = str(dep.spec)
    features = generated_products(dep.sandbox)
    with CatalogReplay(features=features) as cat:
        dep.cbm("onboard", spec, "--parcels", str(PARCELS), "--aoi", "dk", "--from", "2026-04-01", "--to", "2026-04-30",
                "--cards", "s2,bs,c6", env={"CBM_CATALOG_URL": cat.url})
    # the reference: the S2 scenes as `cbm extract swarm` extracts them, done here unless they all are done
    # already (by the end-to-end tests; a test stopped in the middle of an extraction leaves scenes half done)
    if dep.query("SELECT count(*) FROM dias_catalogue WHERE card = 's2' AND status NOT IN ('extracted', 'No parcels')")[0][0]:
        dep.cbm("extract", "swarm", spec, "--card", "s2", "--all", env={"CBM_EXTRACT_POLL": "1"})
    # the last S2 product is published late: out of the catalog (and of the stand-in) until the first run is over
    late = features["Sentinel2"][-1]
    ref = late["properties"]["title"]
    kept = dep.query(SIGS + " WHERE c.reference = %s", (ref,)), dep.query(HISTS + " WHERE c.reference = %s", (ref,))
    assert all(kept), "the swarm extracted nothing of the late product: the generated scene misses the parcels"
    dep.query("DELETE FROM sigs WHERE obsid IN (SELECT id FROM dias_catalogue WHERE reference = %(r)s);"
              " DELETE FROM hists WHERE obsid IN (SELECT id FROM dias_catalogue WHERE reference = %(r)s);"
              " DELETE FROM dias_catalogue WHERE reference = %(r)s", {"r": ref})
    published = {"Sentinel2": features["Sentinel2"][:-1], "Sentinel1": list(features["Sentinel1"])}
    gateway = urllib.parse.urlsplit(dep.sandbox.eodata_endpoint()).hostname   # where the hosts reach this machine
    try:
        with CatalogReplay(features=published, host=gateway) as cat:
            env = {"CBM_CATALOG_URL": cat.url}
            check = dep.cbm("schedule", spec, "--cards", "s2,bs,c6", "--every", "1d", "--check", env=env)
            assert "would change" in check.stdout and "cbm-schedule" not in services(dep), check.stdout[-3000:]
            # the late product is sensed months before today: a lookback that reaches back to it
            dep.cbm("schedule", spec, "--cards", "s2,bs,c6", "--every", "1d", "--lookback", "365d", env=env)
            first = dep.cbm("schedule", spec, "--run-now", timeout=1800)
            assert re.search(r"run \d+ \(request\): ok", first.stdout), first.stdout
            before = dep.query("SELECT obsid, res, finished_at FROM extraction_runs ORDER BY 1, 2")

            cat.features["Sentinel2"].append(late)
            second = dep.cbm("schedule", spec, "--run-now", timeout=1800)
        status = dep.cbm("status", spec).stdout
    finally:   # the shared deployment is left without the job
        off = run_cbm("schedule", spec, "--off", env=dep.env, timeout=900)
    assert "ok" in second.stdout and "1 new product(s), 3 scene run(s) extracted, 0 failed" in second.stdout, \
        second.stdout
    new_id = dep.query("SELECT id FROM dias_catalogue WHERE reference = %s", (ref,))[0][0]
    after = dep.query("SELECT obsid, res, finished_at FROM extraction_runs ORDER BY 1, 2")
    assert [r for r in after if r[0] != new_id] == before
    assert sorted(r[1] for r in after if r[0] == new_id) == [-1, 10, 20]
    # the job extracted the late product as the swarm did: the same rows
    assert sorted(dep.query(SIGS + " WHERE c.reference = %s", (ref,))) == sorted(kept[0])
    assert sorted(dep.query(HISTS + " WHERE c.reference = %s", (ref,))) == sorted(kept[1])
    log = dep.query("SELECT log FROM schedule_runs ORDER BY id DESC LIMIT 1")[0][0]
    assert "1 new" in dep.ssh("manager", 0, f"sudo cat {log}")
    assert "continuous mode" in status and "next run" in status and log in status, status

    assert off.returncode == 0 and "removed the schedule and its job" in off.stdout, off.stdout + off.stderr
    assert "cbm-schedule" not in services(dep)
    assert dep.query("SELECT count(*) FROM schedule")[0][0] == 0


def services(dep) -> str:
    return dep.ssh("manager", 0, "sudo docker service ls --format '{{.Name}}'")
