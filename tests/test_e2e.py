"""End to end on the sandbox cloud, in file order, on one deployment (1 manager + 2 workers):

  up (provision + configure) -> onboard the DK sample parcels -> extract every card on the swarm
  while a worker is killed -> the results equal an undisturbed run -> rolling upgrade while an
  extraction runs -> PostGIS restarted while an extraction runs -> down --keep-volume / up keeps
  every row -> down leaves nothing.

The undisturbed reference is computed on this machine with the same products, parcels and code
(`cbm extract run` against a throwaway PostGIS), so nothing is hard-coded.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import PARCEL_SAMPLES, run_cbm, wait_for

pytestmark = pytest.mark.docker

PARCELS = PARCEL_SAMPLES / "dk_marker_2026" / "Marker_2026.shp"
START, END = "2026-04-01", "2026-04-30"
RUNS = [("s2", "-1"), ("s2", "10"), ("s2", "20"), ("bs", "10"), ("c6", "20")]
HOLD = 727272   # the advisory lock a test holds to keep workers in the middle of writing

SIGS = ("SELECT s.pid, c.reference, s.band, s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75"
        " FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid")
HISTS = "SELECT h.pid, c.reference, h.hist::text FROM hists h JOIN dias_catalogue c ON c.id = h.obsid"
CHECKSUM = ("SELECT (SELECT count(*) FROM sigs), (SELECT count(*) FROM hists),"
            " (SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT concat_ws('|', pid, obsid, band, count, mean,"
            "  std, min, max, p25, p50, p75) x FROM sigs) s),"
            " (SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT concat_ws('|', pid, obsid, hist::text) x"
            "  FROM hists) h)")


@pytest.fixture(scope="module")
def e2e(live_deployment):
    """The shared live deployment, with the generated products in the sandbox's /eodata."""
    from sandbox.rehearsal import generate

    live_deployment.features = generate(Path(live_deployment.sandbox.eodata))
    live_deployment.sandbox.republish_eodata()  # the S3 server serves the new products too
    live_deployment.env["CBM_EXTRACT_POLL"] = "1"
    return live_deployment


@pytest.fixture(scope="module")
def reference(e2e, postgis):
    """The undisturbed run: same products, parcels and code, one local worker per run."""
    from sandbox.catalog_replay import CatalogReplay

    postgis.psql("CREATE DATABASE e2e_reference TEMPLATE cbm_template")
    env = {**postgis.env("e2e_reference"), "CBM_EODATA_SOURCE": "folder", "CBM_EODATA_ROOT": str(e2e.sandbox.eodata),
           "XDG_CONFIG_HOME": "/nonexistent"}
    with CatalogReplay(features=e2e.features) as cat:
        env["CBM_CATALOG_URL"] = cat.url
        for args in (["db", "init"], ["parcels", "load", str(PARCELS), "--table", "dk_parcels"],
                     ["aoi", "add", "dk", "--from-parcels", "dk_parcels"],
                     *[["catalog", "sync", "dk", START, END, card] for card in ("s2", "bs", "c6")]):
            proc = run_cbm(*args, env=env)
            assert proc.returncode == 0, proc.stderr
    for card, res in RUNS:
        proc = run_cbm("extract", "run", "--card", card, "--res", res, "--aoi", "dk", "--parcels", "dk_parcels",
                       env=env, timeout=900)
        assert proc.returncode == 0, proc.stderr

    import psycopg2

    with psycopg2.connect(host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"], dbname=env["PGDATABASE"],
                          passfile=env["PGPASSFILE"]) as conn, conn.cursor() as cur:
        cur.execute(SIGS)
        sigs = sorted(cur.fetchall())
        cur.execute(HISTS)
        hists = sorted(cur.fetchall())
    assert sigs and hists, "the reference run extracted nothing: the generated scenes miss the parcels"
    return sigs, hists


def test_onboard(e2e):
    from sandbox.catalog_replay import CatalogReplay

    with CatalogReplay(features=e2e.features) as cat:
        e2e.env["CBM_CATALOG_URL"] = cat.url
        proc = e2e.cbm("onboard", str(e2e.spec), "--parcels", str(PARCELS), "--aoi", "dk", "--from", START,
                       "--to", END, "--cards", "s2,bs,c6")
        assert "catalog for AOI dk" in proc.stdout
        again = e2e.cbm("onboard", str(e2e.spec), "--parcels", str(PARCELS), "--aoi", "dk", "--from", START,
                        "--to", END, "--cards", "s2,bs,c6")
    assert "already loaded" in again.stdout
    n = len(e2e.features["Sentinel2"]) + len(e2e.features["Sentinel1"])
    assert e2e.query("SELECT count(*) FROM dias_catalogue") == [(n,)]


def test_swarm_extraction_survives_a_killed_worker(e2e, reference):
    proc = e2e.background("extract", "swarm", str(e2e.spec), "--card", "s2", "--all", "--lease", "20")
    killed = ""
    deadline = time.monotonic() + 900
    keys = yaml.safe_load(e2e.sandbox.s3.credentials_file.read_text())
    inspected = ""
    while not killed and proc.poll() is None and time.monotonic() < deadline:
        if e2e.query("SELECT count(*) FROM extraction_runs WHERE status = 'inprogress'")[0][0]:
            # the workers read S3 with keys handed over as a swarm secret: in no spec, env or log. Whichever
            # run's service is up now (the SCL run's claims last about 2 s, the next run's service may be up)
            inspected = e2e.ssh("manager", 0, "for s in $(sudo docker service ls -q --filter name=cbm-extract-s2); do"
                                              " sudo docker service inspect $s && sudo docker service logs --raw $s 2>&1;"
                                              " done; true")
            if "CBM_EODATA_SOURCE" not in inspected:   # between two runs: no service to look at yet
                continue
            for i in (0, 1):
                inspected += e2e.ssh("workers", i, "sudo docker ps -q --filter label=com.docker.swarm.service.name "
                                                   "| xargs -r sudo docker inspect")
            for i in (0, 1):
                killed = e2e.ssh("workers", i, "sudo docker ps -q --filter label=com.docker.swarm.service.name "
                                               "| xargs -r sudo docker kill").strip()
                if killed:
                    break
        else:
            time.sleep(0.5)
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-4000:]
    assert killed, "no worker task was running to be killed"
    assert "CBM_S3_CREDENTIALS_FILE=/run/secrets/s3" in inspected and "CBM_EODATA_SOURCE=s3" in inspected
    assert keys["secret_key"] not in inspected and keys["access_key"] not in inspected
    # they log in as their least-privilege role, its password a swarm secret too (extractor/grants.py)
    worker_password = (e2e.state / "db_worker_password").read_text().strip()
    assert "PGUSER=cbm_worker" in inspected and "PGPASSFILE=/run/secrets/pgpass" in inspected
    assert worker_password not in inspected
    for card in ("bs", "c6"):
        e2e.cbm("extract", "swarm", str(e2e.spec), "--card", card, "--all")
    sigs, hists = reference
    e2e.assert_same_rows(SIGS, sigs)
    e2e.assert_same_rows(HISTS, hists)
    assert e2e.query("SELECT count(*) FROM sigs GROUP BY pid, obsid, band HAVING count(*) > 1") == []
    assert "cbm-extract" not in e2e.ssh("manager", 0, "sudo docker service ls --format '{{.Name}}'")
    statuses = dict(e2e.query("SELECT status, count(*) FROM dias_catalogue GROUP BY 1"))
    assert set(statuses) <= {"extracted", "No parcels"}, statuses


def test_upgrade_while_extracting(e2e, reference):
    # Extract bs again, from scratch, while the fleet is upgraded.
    e2e.query("DELETE FROM sigs WHERE obsid IN (SELECT id FROM dias_catalogue WHERE card = 'bs');"
              " DELETE FROM extraction_runs WHERE obsid IN (SELECT id FROM dias_catalogue WHERE card = 'bs');"
              " UPDATE dias_catalogue SET status = 'ingested' WHERE card = 'bs'")
    extraction = e2e.background("extract", "swarm", str(e2e.spec), "--card", "bs", "--lease", "20")
    e2e.cbm("upgrade", str(e2e.spec), "--yes")
    out, _ = extraction.communicate(timeout=1800)
    assert extraction.returncode == 0, out[-4000:]
    sigs, _ = reference
    e2e.assert_same_rows(SIGS, sigs)
    nodes = e2e.ssh("manager", 0, "sudo docker node ls --format '{{.Status}} {{.Availability}}'").split("\n")
    assert [n for n in nodes if n.strip()] == ["Ready Active"] * 3, nodes


def test_swarm_extraction_follows_a_postgis_restart(e2e, reference):
    """PostGIS restarts while `cbm extract swarm` runs and two workers are in the middle of writing
    (their COPY into sigs waits on a lock held by a session in the container, which the restart
    ends): the command keeps following and ends normally, every scene is done once, and the rows
    equal the undisturbed run."""
    scenes = "SELECT id FROM dias_catalogue WHERE card = 'c6'"
    e2e.query(f"DELETE FROM sigs WHERE obsid IN ({scenes}); DELETE FROM extraction_runs WHERE obsid IN ({scenes});"
              " UPDATE dias_catalogue SET status = 'ingested' WHERE card = 'c6';"
              " CREATE FUNCTION hold_copy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
              f" PERFORM pg_advisory_lock({HOLD}); PERFORM pg_advisory_unlock({HOLD}); RETURN NULL; END $$;"
              " CREATE TRIGGER hold_copy AFTER INSERT ON sigs FOR EACH STATEMENT EXECUTE FUNCTION hold_copy()")
    try:
        e2e.ssh("manager", 0, "sudo docker exec -d cbm-postgis psql -U postgres -h /var/run/postgresql -c"
                              f" 'SELECT pg_advisory_lock({HOLD}), pg_sleep(3600)'")
        proc = e2e.background("extract", "swarm", str(e2e.spec), "--card", "c6", "--lease", "20")
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
        wait_for(lambda: e2e.query("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
                                   " AND query LIKE 'COPY%%'")[0][0] == 2 or proc.poll() is not None,
                 timeout=900, interval=1, what="both workers to be writing a scene")
        assert proc.poll() is None, "".join(lines)[-4000:]
        assert e2e.query(f"SELECT count(*) FROM extraction_runs WHERE obsid IN ({scenes})") == [(2,)]  # 2 left
        e2e.ssh("manager", 0, "sudo docker restart cbm-postgis")
        proc.wait(timeout=1800)
    finally:
        e2e.query("DROP TRIGGER IF EXISTS hold_copy ON sigs; DROP FUNCTION IF EXISTS hold_copy()")
    out = "".join(lines)
    assert proc.returncode == 0, out[-4000:]
    # every scene finished after the restart, once: no duplicate, none lost, results as undisturbed
    assert e2e.query(f"SELECT r.status, count(*) FROM extraction_runs r WHERE obsid IN ({scenes})"
                     " AND finished_at > pg_postmaster_start_time() GROUP BY 1") == [("extracted", 4)]
    sigs, hists = reference
    e2e.assert_same_rows(SIGS, sigs)
    e2e.assert_same_rows(HISTS, hists)
    assert e2e.query("SELECT count(*) FROM sigs GROUP BY pid, obsid, band HAVING count(*) > 1") == []
    assert e2e.query("SELECT count(*) FROM hists GROUP BY pid, obsid HAVING count(*) > 1") == []


def test_down_keep_volume_then_up_keeps_every_row(e2e):
    before = e2e.query(CHECKSUM)
    assert before[0][0] > 0
    servers = {s.id for s in e2e.sandbox.connect().compute.servers() if s.name.startswith("cbm-live")}
    e2e.cbm("down", str(e2e.spec), "--keep-volume", "--yes")
    assert [name for name in e2e.cloud_leftovers() if not name.endswith("-data")] == []
    e2e.cbm("up", str(e2e.spec))
    after = {s.id for s in e2e.sandbox.connect().compute.servers() if s.name.startswith("cbm-live")}
    assert after and not after & servers  # new hosts, same volume
    assert e2e.query(CHECKSUM) == before
    # the swarm came back from the volume: exactly the new hosts, ready (the old ones forgotten)
    nodes = e2e.ssh("manager", 0, "sudo docker node ls --format '{{.Hostname}} {{.Status}} {{.Availability}}'")
    assert sorted(nodes.split("\n")[:-1]) == sorted(f"{name} Ready Active" for group in ("manager", "workers")
                                                    for name in e2e.hosts["children"][group]["hosts"]), nodes
