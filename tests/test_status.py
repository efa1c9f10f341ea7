"""`cbm status` on the real throwaway PostGIS: the tables show the counts of the rows the test inserts
(expectations computed from what was inserted), the extraction rate and ETA follow the run times,
--png writes a real PNG, and a deployment whose cloud and manager cannot be reached still reports its
database with notes and exit code 1."""

from __future__ import annotations

import os
import random
import re
import subprocess
import struct
from collections import Counter

import pytest
import yaml

from conftest import assert_one_line_error, run_cbm
from extractor import settings as settings_mod
from extractor.progress import extraction_progress
from provision.hosts.files import DeploymentFiles
from provision.ops import deployment, status

CARD_RUNS = {"s2": (-1, 10, 20), "bs": (10,), "c6": (20,)}
RUN_LABEL = {-1: "SCL hist", 10: "10 m", 20: "20 m"}


def table_rows(output: str, title: str) -> list[list[str]]:
    """The body rows of the rich table printed under `title`."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(title))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append([c.strip() for c in line.strip("│").split("│")])
    return rows


@pytest.fixture
def scenes(dbenv):
    """A catalogue with runs in every state; returns what was inserted, to compute expectations."""
    assert run_cbm("db", "init").returncode == 0
    rng = random.Random(7)
    inserted = []  # (obsid, card, catalogue status, {res: (run status, rows, minutes ago finished, took)})
    with dbenv.conn() as conn, conn.cursor() as cur:
        for i in range(40):
            card = rng.choice(["s2", "s2", "bs", "c6"])
            runs = {}
            for res in CARD_RUNS[card]:
                state = rng.choice(["done", "done", "recent", "failed", "todo", "running", "none"])
                runs[res] = state
            if "failed" in runs.values():
                cstatus = "Rio error"
            elif "running" in runs.values():
                cstatus = "inprogress"
            elif all(v in ("done", "recent") for v in runs.values()):
                cstatus = "extracted"
            else:
                cstatus = "ingested"
            cur.execute("INSERT INTO dias_catalogue (obstime, reference, sensor, card, status)"
                        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                        (f"2024-04-{1 + i % 28:02d}", f"REF_{i}", "s2" if card == "s2" else "s1", card, cstatus))
            obsid = cur.fetchone()[0]
            recorded = {}
            for res, state in runs.items():
                rows = rng.randint(1, 500)
                if state == "none":
                    continue
                if state == "done":      # finished two to three hours ago
                    cur.execute("INSERT INTO extraction_runs (obsid, res, status, rows, claimed_at, finished_at)"
                                " VALUES (%s, %s, 'extracted', %s, now() - interval '3 hours',"
                                " now() - interval '2 hours')", (obsid, res, rows))
                elif state == "recent":  # claimed 30 min ago, finished 10 min ago
                    cur.execute("INSERT INTO extraction_runs (obsid, res, status, rows, claimed_at, finished_at)"
                                " VALUES (%s, %s, 'extracted', %s, now() - interval '30 minutes',"
                                " now() - interval '10 minutes')", (obsid, res, rows))
                elif state == "failed":
                    cur.execute("INSERT INTO extraction_runs (obsid, res, status, rows, attempts, finished_at)"
                                " VALUES (%s, %s, 'Rio error', 0, 1, now())", (obsid, res))
                elif state == "running":
                    cur.execute("INSERT INTO extraction_runs (obsid, res, status, owner, claimed_at, lease_until,"
                                " attempts) VALUES (%s, %s, 'inprogress', 'w1', now(), now() + interval '5 minutes', 1)",
                                (obsid, res))
                elif state == "todo":
                    cur.execute("INSERT INTO extraction_runs (obsid, res, status) VALUES (%s, %s, 'ingested')",
                                (obsid, res))
                recorded[res] = (state, rows)
            inserted.append((obsid, card, cstatus, recorded))
    conn.close()
    return inserted


def expected_progress(inserted) -> dict:
    out = {}
    for card, runs in CARD_RUNS.items():
        for res in runs:
            mine = [(c, rec.get(res)) for _, cd, c, rec in inserted if cd == card]
            if not mine:
                continue
            states = [r[0] if r else "none" for _, r in mine]
            open_scene = [c in ("ingested", "inprogress") and (r is None or r[0] in ("todo", "running"))
                          for c, r in mine]
            out[(card, res)] = {
                "scenes": len(mine),
                "done": sum(s in ("done", "recent") for s in states),
                "failed": states.count("failed"),
                "running": states.count("running"),
                "left": sum(open_scene),
                "rows": sum(r[1] for _, r in mine if r and r[0] in ("done", "recent")),
                "last_hour": states.count("recent"),
            }
    return out


def test_tables_show_the_counts_of_the_rows_in_the_database(dbenv, scenes):
    proc = run_cbm("status")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert dbenv["PGDATABASE"] in out

    catalog = {(r[0], r[1]): int(r[2]) for r in table_rows(out, "catalog: scenes by card and status")}
    assert catalog == dict(Counter((card, cstatus) for _, card, cstatus, _ in scenes))

    expected = expected_progress(scenes)
    shown = {}
    for row in table_rows(out, "extraction"):
        card, run, total, done, failed, running, left, rows, rate, eta = row
        res = next(r for r, label in RUN_LABEL.items() if label == run)
        shown[(card, res)] = {"scenes": int(total), "done": int(done), "failed": int(failed),
                              "running": int(running), "left": int(left), "rows": int(rows.replace(",", ""))}
    assert shown == {k: {x: v[x] for x in shown[k]} for k, v in expected.items()}


def test_rate_per_hour_and_eta_follow_the_run_times(dbenv, scenes):
    expected = expected_progress(scenes)
    settings = settings_mod.load(None)
    with dbenv.conn() as conn:
        progress = {(p["card"], p["res"]): p for p in extraction_progress(conn, settings)}
    conn.close()
    assert set(progress) == set(expected)
    for key, want in expected.items():
        got = progress[key]
        assert got["last_hour"] == want["last_hour"], key
        # runs of the last hour were claimed 30 minutes ago: the window is half an hour
        assert got["rate"] == pytest.approx(2.0 * want["last_hour"], rel=0.02), key
        if want["last_hour"] and want["left"]:
            assert got["eta_seconds"] == pytest.approx(want["left"] / (2.0 * want["last_hour"]) * 3600, rel=0.02)
        else:
            assert got["eta_seconds"] is None, key


def test_png_is_a_real_image(dbenv, scenes, tmp_path):
    png = tmp_path / "status.png"
    proc = run_cbm("status", "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 400
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.05  # something was drawn
    assert_one_line_error(run_cbm("status", "--png", str(tmp_path / "no" / "dir.png")), "--png", code=2)


def test_empty_database_and_unreachable_database(dbenv):
    proc = run_cbm("status")
    assert proc.returncode == 0, proc.stderr
    assert "cbm db init" in proc.stdout
    from sandbox.localdb import free_port

    assert_one_line_error(run_cbm("status", env={"PGPORT": str(free_port())}), "cannot connect", code=1)


def test_spec_with_unreachable_cloud_still_reports_the_database_through_the_tunnel(postgis, tmp_path, monkeypatch):
    """The cloud (a closed port) fails: a note, exit 1; the database (private, behind the manager's SSH)
    is still shown. Then the manager's SSH fails too: the database's note names the manager."""
    from sandbox.localdb import free_port
    from ssh_server import SshServer
    from test_deployment import write_deployment

    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(yaml.safe_dump({"clouds": {"nowhere": {"auth": {
        "auth_url": f"http://127.0.0.1:{free_port()}/v3", "username": "u", "password": "p",
        "project_name": "p", "user_domain_name": "Default", "project_domain_name": "Default"},
        "region_name": "RegionOne", "identity_api_version": 3}}}))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)
    # the manager: an SSH server on 127.0.0.1 (no docker: the swarm part fails) that sees the session
    # server (database `postgres`) at 127.0.0.1
    with SshServer(DeploymentFiles("dktest").ensure_ssh_key()) as manager:
        path = write_deployment(tmp_path, "127.0.0.1", postgis.port, postgis.password, ssh_port=manager.port,
                                private_ip="127.0.0.1")
        proc = run_cbm("status", str(path), env={"PGPASSFILE": str(tmp_path / "none")}, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "note: hosts:" in proc.stdout and "identity service" in proc.stdout
    assert "note: swarm:" in proc.stdout
    assert "note: database" not in proc.stdout and "postgres" in proc.stdout
    assert postgis.password not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_cbm("status", str(path), env={"PGPASSFILE": str(tmp_path / "none")}, timeout=300)   # SSH gone
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "note: swarm: skipped" in proc.stdout
    assert re.search(r"note: database: no SSH connection to the manager cbm-dktest-manager \(eouser@127\.0\.0\.1\)"
                     rf" for the tunnel to 127\.0\.0\.1:{postgis.port}", proc.stdout), proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.docker
def test_swarm_part_reaches_the_manager_over_ssh_with_the_deployment_key(tmp_path, monkeypatch):
    """A real sshd host (the sandbox's host image) without Docker: key auth works, the host key is pinned
    in the state folder, and the missing `docker node ls` becomes a one-line reason, not a traceback."""
    from extractor.errors import CbmError
    from sandbox.cloud import hostimage
    from test_deployment import write_deployment

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    public = DeploymentFiles("dktest").ensure_ssh_key()
    name = f"cbm-ops-status-{os.getpid()}"
    cid = hostimage.create_host(name, authorized_keys=public, labels={"cbm-ops": "1"})
    try:
        ip = next(a for a in hostimage.container_ips(cid).values() if a)
        hostimage.wait_for_ssh(ip, timeout=60)
        path = write_deployment(tmp_path, ip, 11039, "pw")
        dep = deployment.load(path)
        with pytest.raises(CbmError, match=f"docker node ls on {ip} failed") as err:
            status.swarm_nodes(dep)
        assert "\n" not in str(err.value)
        assert ip in dep.files.known_hosts.read_text()  # pinned on first contact
        conn = dep.manager_ssh()
        try:
            assert conn.run("id -un", hide=True, in_stream=False).stdout.strip() == "eouser"
        finally:
            conn.close()
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", cid], capture_output=True)
