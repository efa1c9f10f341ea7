"""Shared fixtures: a real throwaway PostGIS (no mocks of the database anywhere) and a way to
run the real `cbm` command as a user would."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from sandbox.localdb import LocalPostgis

REPO = Path(__file__).resolve().parent.parent
PARCEL_SAMPLES = REPO / "examples" / "parcels"   # real DK and NL parcels (see its README.md)
CDSE_REPLIES = REPO / "tests" / "data" / "cdse"  # recorded CDSE resto replies (see its README.md)

_db_counter = itertools.count()


# Modules that leave the shared live deployment in another shape (test_scaling: 1 worker instead of 2)
# run after every other test, so that none has to rebuild it (a worker costs a configure run).
LAST_MODULES = ("test_scaling.py",)


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items):
    """The order above, and the units `pytest -n 2 --dist loadgroup` (./run test) hands to its workers:
    a module at a time (its module fixtures are built once, its tests run in file order), and every
    module that uses the shared live deployment in one unit, "live", so that one worker builds it."""
    items.sort(key=lambda item: item.path.name in LAST_MODULES)   # stable: the file order otherwise
    live = {item.path for item in items if "live_deployment" in item.fixturenames}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("live" if item.path in live else item.path.stem))


@pytest.fixture(scope="session")
def postgis():
    """One PostGIS server for the session, with a template database that has the extension."""
    with LocalPostgis() as pg:
        pg.psql("CREATE DATABASE cbm_template")
        pg.psql("CREATE EXTENSION postgis", dbname="cbm_template")
        yield pg


@pytest.fixture
def dbenv(postgis, tmp_path, monkeypatch):
    """A fresh, empty database for one test; PG* variables point at it (also for subprocesses).

    Returns the environment dict; `dbenv.conn()` opens a psycopg2 connection to it."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    postgis.psql(f"CREATE DATABASE {name} TEMPLATE cbm_template")
    env = postgis.env(name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # Keep the user's own settings out of the tests.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CBM_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    yield DbEnv(env, name)
    postgis.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class DbEnv(dict):
    def __init__(self, env: dict, name: str):
        super().__init__(env)
        self.name = name

    def conn(self):
        c = psycopg2.connect(**{"host": self["PGHOST"], "port": self["PGPORT"], "user": self["PGUSER"],
                                "dbname": self["PGDATABASE"], "passfile": self["PGPASSFILE"]})
        c.autocommit = True
        return c

    def query(self, sql: str, params=None):
        with self.conn() as c, c.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else None


def run_cbm(*args: str, env: dict | None = None, input: str | None = None, timeout: int = 600):
    """Run the real `cbm` command in a subprocess, as a user would; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "cbm", *args], env=full_env, input=input,
                          capture_output=True, text=True, timeout=timeout, cwd=os.getcwd())


def wait_for(predicate, what: str = "condition", timeout: float = 60.0, interval: float = 0.05):
    """Poll `predicate` until it returns something true (returned) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def assert_one_line_error(proc, *needles: str, code: int | None = None):
    """A user mistake: non-zero exit, one line on stderr, no traceback, naming what is wrong."""
    assert proc.returncode != 0, proc.stdout
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle.lower() in err.lower(), err
    return err


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    """One sandbox cloud for the session (sandbox/cloud): real host containers, loop-device volumes.

    `sandbox.env` (OS_CLIENT_CONFIG_FILE, OS_CLOUD), `.clouds_yaml`, `.cloud_name`, `.connect()`,
    `.inject(kind, mode=, count=)`, `.clear_faults()`, `.settings(page_size=, quotas=)`, `.status()`;
    `sandbox.eodata` is the folder mounted read-only at /eodata in servers on the `eodata` network.
    Purged (containers, networks, loop devices, files) at the end of the session."""
    import shutil as _shutil

    from sandbox.cloud import Sandbox

    if _shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("the sandbox cloud needs a running Docker Engine: run scripts/dockerd.sh (as root)")
    root = tmp_path_factory.mktemp("sandbox")
    eodata = root / "eodata"
    eodata.mkdir()
    sb = Sandbox(root / "state", eodata=eodata).start()
    sb.eodata = eodata
    yield sb
    sb.stop(purge=True)


@pytest.fixture(scope="session")
def live_deployment(sandbox, tmp_path_factory):
    """ONE deployment of inventories/sandbox/deployment.yml (1 manager + 2 workers), provisioned AND
    configured (`cbm up`, site.yml) once per session and shared by every test that needs configured
    hosts (configure re-runs, upgrade, end to end): a cold site.yml costs minutes.

    Tests may change data on it but must leave it configured and up (a test that tears it down must
    bring it back). `cbm down` at the end of the session; nothing of it may be left in the cloud.
    Attributes: .spec (its deployment.yml in a temp folder), .env (sandbox cloud + XDG_STATE_HOME),
    .state (its state folder), .cbm(*args) (runs the real cbm, asserts exit 0), .hosts (inventory)."""
    from live import LiveDeployment

    dep = LiveDeployment(sandbox, tmp_path_factory.mktemp("live"))
    dep.cbm("up", str(dep.spec), timeout=2400)
    yield dep
    proc = run_cbm("down", str(dep.spec), "--yes", env=dep.env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    left = dep.cloud_leftovers()
    assert not left, f"cbm down left resources of the deployment in the cloud: {left}"
    # without --keep-volume, down dumped the database into the state folder first
    dump = re.search(r"^backup: (\S+) \(", proc.stdout, re.M)
    assert dump and Path(dump.group(1)).parent == dep.state / "backups", proc.stdout
    assert Path(dump.group(1)).read_bytes()[:5] == b"PGDMP", proc.stdout
