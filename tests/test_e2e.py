"""End to end on the sandbox cloud, in file order, on one deployment (1 manager + 2 workers):

  up (provision + configure) -> onboard the DK sample parcels -> extract every card on the swarm
  while a worker is killed -> the results equal an undisturbed run -> rolling upgrade while an
  extraction runs -> down --keep-volume / up keeps every row -> down leaves nothing.

The undisturbed reference is computed on this machine with the same products, parcels and code
(`cbm extract run` against a throwaway PostGIS), so nothing is hard-coded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import FIXTURES, REPO, run_cbm

pytestmark = pytest.mark.docker

SPEC = REPO / "inventories" / "sandbox" / "deployment.yml"
PARCELS = FIXTURES / "parcels" / "dk_marker_2026" / "Marker_2026.shp"
START, END = "2026-04-01", "2026-04-30"
RUNS = [("s2", "-1"), ("s2", "10"), ("s2", "20"), ("bs", "10"), ("c6", "20")]

SIGS = ("SELECT s.pid, c.reference, s.band, s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75"
        " FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid")
HISTS = "SELECT h.pid, c.reference, h.hist::text FROM hists h JOIN dias_catalogue c ON c.id = h.obsid"
CHECKSUM = ("SELECT (SELECT count(*) FROM sigs), (SELECT count(*) FROM hists),"
            " (SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT concat_ws('|', pid, obsid, band, count, mean,"
            "  std, min, max, p25, p50, p75) x FROM sigs) s),"
            " (SELECT md5(string_agg(x, ',' ORDER BY x)) FROM (SELECT concat_ws('|', pid, obsid, hist::text) x"
            "  FROM hists) h)")


class E2E:
    def __init__(self, sandbox, folder: Path):
        from provision.rehearsal import generate

        self.sandbox = sandbox
        data = yaml.safe_load(SPEC.read_text())
        data.update(name="e2e", prefix="cbm-e2e", tags=["cbm-e2e"])
        (folder / "e2e").mkdir()
        self.spec = folder / "e2e" / "deployment.yml"
        self.spec.write_text(yaml.safe_dump(data))
        self.state_home = folder / "state"
        self.env = {**sandbox.env, "XDG_STATE_HOME": str(self.state_home), "CBM_EXTRACT_POLL": "1"}
        self.features = generate(Path(sandbox.eodata))

    def cbm(self, *args: str, timeout: int = 1800):
        proc = run_cbm(*args, env=self.env, timeout=timeout)
        assert proc.returncode == 0, f"cbm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    @property
    def hosts(self) -> dict:
        return yaml.safe_load((self.spec.parent / "hosts.yml").read_text())["all"]

    def query(self, sql: str):
        """Run SQL on the deployment's PostGIS, through its published port, with its password file."""
        import psycopg2

        password = (self.state_home / "cbm" / "e2e" / "db_password").read_text().strip()
        with psycopg2.connect(host=self.hosts["vars"]["cbm_manager_public_ip"], port=self.hosts["vars"]["cbm_db_port"],
                              user="postgres", dbname="postgres", password=password) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else None

    def ssh(self, group: str, index: int, command: str) -> str:
        """Run a command on a host of the deployment (workers through the manager, as Ansible does)."""
        hosts = self.hosts
        name = sorted(hosts["children"][group]["hosts"])[index]
        key = hosts["vars"]["ansible_ssh_private_key_file"]
        opts = ["-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR"]
        jump = []
        if group == "workers":
            jump = ["-o", f"ProxyCommand=ssh {' '.join(opts)} -W %h:%p eouser@{hosts['vars']['cbm_manager_public_ip']}"]
        address = hosts["children"][group]["hosts"][name]["ansible_host"]
        proc = subprocess.run(["ssh", *opts, *jump, f"eouser@{address}", command], capture_output=True, text=True,
                              timeout=60)
        return proc.stdout

    def background(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cbm", *args], env={**os.environ, **self.env}, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def e2e(sandbox, tmp_path_factory):
    ctx = E2E(sandbox, tmp_path_factory.mktemp("e2e"))
    ctx.cbm("up", str(ctx.spec))
    yield ctx
    run_cbm("down", str(ctx.spec), "--yes", env=ctx.env, timeout=600)


@pytest.fixture(scope="module")
def reference(e2e, postgis):
    """The undisturbed run: same products, parcels and code, one local worker per run."""
    from extractor.catalog_replay import CatalogReplay

    postgis.psql("CREATE DATABASE e2e_reference TEMPLATE cbm_template")
    env = {**postgis.env("e2e_reference"), "CBM_EODATA_ROOT": str(e2e.sandbox.eodata),
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
    from extractor.catalog_replay import CatalogReplay

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
    while not killed and proc.poll() is None and time.monotonic() < deadline:
        if e2e.query("SELECT count(*) FROM extraction_runs WHERE status = 'inprogress'")[0][0]:
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
    for card in ("bs", "c6"):
        e2e.cbm("extract", "swarm", str(e2e.spec), "--card", card, "--all")
    sigs, hists = reference
    assert sorted(e2e.query(SIGS)) == sigs
    assert sorted(e2e.query(HISTS)) == hists
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
    assert sorted(e2e.query(SIGS)) == sigs
    nodes = e2e.ssh("manager", 0, "sudo docker node ls --format '{{.Status}} {{.Availability}}'").split("\n")
    assert [n for n in nodes if n.strip()] == ["Ready Active"] * 3, nodes


def test_down_keep_volume_then_up_keeps_every_row(e2e):
    before = e2e.query(CHECKSUM)
    assert before[0][0] > 0
    e2e.cbm("down", str(e2e.spec), "--keep-volume", "--yes")
    e2e.cbm("up", str(e2e.spec))
    assert e2e.query(CHECKSUM) == before


def test_down_leaves_nothing(e2e):
    e2e.cbm("down", str(e2e.spec), "--yes")
    conn = e2e.sandbox.connect()
    assert [s.name for s in conn.compute.servers() if s.name.startswith("cbm-e2e")] == []
    assert [v.name for v in conn.block_storage.volumes() if (v.name or "").startswith("cbm-e2e")] == []
    assert [g.name for g in conn.network.security_groups() if g.name.startswith("cbm-e2e")] == []
    assert [k.name for k in conn.compute.keypairs() if k.name.startswith("cbm-e2e")] == []
    assert [ip for ip in conn.network.ips() if (ip.description or "").find("e2e") >= 0] == []
