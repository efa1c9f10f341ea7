"""Scaling the workers of the shared live deployment while an extraction runs, 2 -> 3 -> 1 (issue 13):

  * `cbm up` with 3 workers; `cbm extract swarm` starts once the new worker is in the inventory but not
    configured yet (no Docker: its playbook must load the image on the swarm's nodes only, the cause
    of the clean-clone failure "Failed to import the required Python library (requests)"); the new
    worker is configured, joins with the extractor image and gets a task of the running service, which
    claims a scene;
  * `cbm up` with 1 worker drains workers 2 and 3: each was in the middle of a scene (its reads of the
    S3 server held), and gives it back at once on SIGTERM, without using an attempt; they are removed
    from the swarm and their servers deleted;
  * the extraction ends by itself (exit 0): every scene done once, attempts 1, rows equal to an
    undisturbed run, no duplicate, no Down node.

To make "in the middle of a scene" certain rather than likely (a sandbox scene takes a second or two):
the SCL runs are held by this test as by another worker (live leases, so the workers wait), while
worker 3 is added; then the S3 stand-in is paused (SIGSTOP: its connections stay open, nothing comes
back), the runs are let go, and each worker claims one and waits in its read; the drain comes then.
It runs after every other test of the session (conftest.LAST_MODULES) and leaves the deployment with 1
worker, which the session's `cbm down` deletes: rebuilding worker 2 would cost another configure run.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from conftest import PARCEL_SAMPLES, wait_for

pytestmark = pytest.mark.docker

PARCELS = PARCEL_SAMPLES / "dk_marker_2026" / "Marker_2026.shp"
START, END = "2026-04-01", "2026-04-30"
SIGS = ("SELECT s.pid, c.reference, s.band, s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75"
        " FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid WHERE c.card = 's2'")
HISTS = "SELECT h.pid, c.reference, h.hist::text FROM hists h JOIN dias_catalogue c ON c.id = h.obsid"
RESET_S2 = ("DELETE FROM sigs WHERE obsid IN (SELECT id FROM dias_catalogue WHERE card = 's2');"
            " DELETE FROM hists WHERE obsid IN (SELECT id FROM dias_catalogue WHERE card = 's2');"
            " DELETE FROM extraction_runs WHERE obsid IN (SELECT id FROM dias_catalogue WHERE card = 's2');"
            " UPDATE dias_catalogue SET status = 'ingested' WHERE card = 's2'")
HOLDER = "held-by-the-test:0"
HOLD_SCL = ("INSERT INTO extraction_runs (obsid, res, status, owner, claimed_at, lease_until, attempts)"
            f" SELECT id, -1, 'inprogress', '{HOLDER}', now(), now() + interval '1 hour', 0"
            " FROM dias_catalogue WHERE card = 's2'")
LET_GO = (f"UPDATE extraction_runs SET status = 'ingested', owner = NULL, claimed_at = NULL, lease_until = NULL"
          f" WHERE owner = '{HOLDER}'")
CLAIMS = f"SELECT owner FROM extraction_runs WHERE status = 'inprogress' AND owner <> '{HOLDER}'"
STOPPED = "given back: the worker was asked to stop (SIGTERM)"
SCL = "cbm-extract-s2-scl"


@pytest.fixture(scope="module")
def extracted(live_deployment):
    """The live deployment onboarded with the generated products, s2 extracted undisturbed once: its rows."""
    from live import generated_products
    from sandbox.catalog_replay import CatalogReplay

    dep = live_deployment
    with CatalogReplay(features=generated_products(dep.sandbox)) as cat:
        dep.cbm("onboard", str(dep.spec), "--parcels", str(PARCELS), "--aoi", "dk", "--from", START, "--to", END,
                "--cards", "s2,bs,c6", env={"CBM_CATALOG_URL": cat.url})
    if dep.query("SELECT count(*) FROM dias_catalogue WHERE card = 's2' AND status NOT IN ('extracted', 'No parcels')")[0][0]:
        dep.cbm("extract", "swarm", str(dep.spec), "--card", "s2", "--all", env={"CBM_EXTRACT_POLL": "1"})
    sigs, hists = sorted(dep.query(SIGS)), sorted(dep.query(HISTS))
    assert sigs and hists
    return dep, sigs, hists


def nodes(dep) -> list[str]:
    out = dep.ssh("manager", 0, "sudo docker node ls --format '{{.Hostname}} {{.Status}} {{.Availability}}'")
    return sorted(line for line in out.splitlines() if line.strip())


def workers(dep) -> list[str]:
    return sorted(dep.hosts["children"]["workers"]["hosts"] or {})


def tasks_on(dep, index: int) -> set[str]:
    """The SCL service's containers on the index-th worker: their ids, the hostnames the workers claim as."""
    out = dep.ssh("workers", index, f"sudo docker ps -aq --filter label=com.docker.swarm.service.name={SCL}")
    return set(out.split())


def s3_signal(dep, sig) -> None:
    """SIGSTOP / SIGCONT the sandbox's S3 stand-in (reads from it hang, then go on)."""
    os.kill(json.loads(dep.sandbox.s3.state_file.read_text())["pid"], sig)


@pytest.mark.timeout(3600)   # a worker configured from scratch (and the fixture: onboard, an undisturbed s2 run)
def test_scaling_2_3_1_during_an_extraction_loses_no_scene(extracted):
    dep, sigs, hists = extracted
    spec = str(dep.spec)
    dep.query(RESET_S2)
    dep.query(HOLD_SCL)
    dep.update_spec(workers=3)
    scale_up = dep.background("up", spec)
    extraction = scale_down = None
    paused = False
    try:
        wait_for(lambda: len(workers(dep)) == 3 or scale_up.poll() is not None, "cbm up to write worker 3 into the "
                 "inventory", timeout=600, interval=1)
        extraction = dep.background("extract", "swarm", spec, "--card", "s2", "--all", "--lease", "20",
                                    env={"CBM_EXTRACT_POLL": "1"})
        up, _ = scale_up.communicate(timeout=2400)
        assert scale_up.returncode == 0, up[-3000:]
        assert workers(dep) == ["cbm-live-worker-1", "cbm-live-worker-2", "cbm-live-worker-3"], up[-3000:]
        assert nodes(dep) == ["cbm-live-manager Ready Active", "cbm-live-worker-1 Ready Active",
                              "cbm-live-worker-2 Ready Active", "cbm-live-worker-3 Ready Active"]
        tasks = [wait_for(lambda i=i: tasks_on(dep, i), f"a task of {SCL} on worker {i + 1}", timeout=300, interval=2)
                 for i in range(3)]
        assert extraction.poll() is None, extraction.stdout.read()[-3000:]

        s3_signal(dep, signal.SIGSTOP)
        paused = True
        dep.query(LET_GO)
        claims = wait_for(lambda: (rows := dep.query(CLAIMS)) and len(rows) == 3 and rows,
                          "each worker to claim a scene and wait in its read", timeout=60, interval=0.5)
        owners = {owner.split(":")[0] for (owner,) in claims}
        assert all(owners & t for t in tasks), (owners, tasks)   # one scene each, worker 3 too

        dep.update_spec(workers=1)
        scale_down = dep.background("up", spec)
        given_back = wait_for(lambda: (rows := dep.query(
            "SELECT owner, status, attempts, lease_until FROM extraction_runs WHERE detail = %s", (STOPPED,)))
            and len(rows) == 2 and rows, "workers 2 and 3 to give their scenes back", timeout=100, interval=0.5)
        s3_signal(dep, signal.SIGCONT)
        paused = False
        # at once, while the S3 reads still hung: the scenes of workers 2 and 3, back in the queue, no attempt used
        assert sorted(given_back) == sorted((f"{next(iter(owners & t))}:1", "ingested", 0, None) for t in tasks[1:])
        down, _ = scale_down.communicate(timeout=1800)
        assert scale_down.returncode == 0, down[-3000:]
        assert "taking cbm-live-worker-2, cbm-live-worker-3 out of the swarm" in down, down[-3000:]
        assert workers(dep) == ["cbm-live-worker-1"]
        assert nodes(dep) == ["cbm-live-manager Ready Active", "cbm-live-worker-1 Ready Active"]
        out, _ = extraction.communicate(timeout=1800)
    finally:   # no extraction service left, S3 answering
        if paused:
            s3_signal(dep, signal.SIGCONT)
        for proc, stop in ((scale_up, signal.SIGTERM), (scale_down, signal.SIGTERM), (extraction, signal.SIGINT)):
            if proc is not None and proc.poll() is None:   # `cbm extract swarm` removes its service on Ctrl-C
                proc.send_signal(stop)
                proc.communicate(timeout=300)
        dep.query(f"DELETE FROM extraction_runs WHERE owner = '{HOLDER}'")
    assert extraction.returncode == 0, out[-4000:]
    assert nodes(dep) == ["cbm-live-manager Ready Active", "cbm-live-worker-1 Ready Active"]
    dep.assert_same_rows(SIGS, sigs)
    dep.assert_same_rows(HISTS, hists)
    assert dep.query("SELECT count(*) FROM sigs GROUP BY pid, obsid, band HAVING count(*) > 1") == []
    assert dep.query("SELECT count(*) FROM hists GROUP BY pid, obsid HAVING count(*) > 1") == []
    statuses = dict(dep.query("SELECT status, count(*) FROM dias_catalogue WHERE card = 's2' GROUP BY 1"))
    assert set(statuses) <= {"extracted", "No parcels"}, statuses
    # done once each: no claim ran out (a killed worker's scene would be claimed again, attempt 2)
    assert dep.query("SELECT DISTINCT r.attempts FROM extraction_runs r JOIN dias_catalogue c ON c.id = r.obsid"
                     " WHERE c.card = 's2'") == [(1,)]
