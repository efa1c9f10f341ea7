"""provision/ops/deployment.py: from a spec to the deployment's database, with a spec, a state folder and an
inventory written by the tests (the real inventory writer; no cloud needed). The database is reached
through an SSH tunnel to the manager: here a real SSH server on 127.0.0.1 (tests/ssh_server.py) stands for
the manager's sshd and forwards to the real throwaway PostGIS."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import psycopg2
import pytest
import yaml

from extractor.errors import CbmError, UserError
from conftest import assert_one_line_error, run_cbm
from provision.cloud import reconcile
from provision.cloud import spec as specs
from provision.hosts import inventory
from provision.hosts.files import DeploymentFiles, write_private
from provision.ops import backup, deployment
from ssh_server import SshServer


def spec_data(name: str = "dktest", db_port: int = 11039) -> dict:
    return {"name": name, "cloud": "nowhere", "image": "Debian 12", "workers": 1, "db_port": db_port,
            "flavors": {"manager": "m1", "worker": "w1"}, "volume": {"size": 10},
            "networks": {"private": "net", "eodata": "eodata", "floating_pool": "external"},
            "ingress": {"ssh": ["198.51.100.0/24"], "db": ["198.51.100.0/24"]}}


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "HOME": str(tmp_path / "home")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CBM_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return env


def write_deployment(tmp_path: Path, manager_ip: str, db_port: int, password: str | None,
                     name: str = "dktest", ssh_port: int | None = None, private_ip: str = "10.0.0.5") -> Path:
    """A deployment `cbm up` could have left: its manager at manager_ip (SSH on ssh_port when given),
    PostGIS at private_ip:db_port as the manager sees it."""
    folder = tmp_path / "inventories" / name
    folder.mkdir(parents=True)
    path = folder / "deployment.yml"
    path.write_text(yaml.safe_dump(spec_data(name, db_port)))
    spec = specs.load(path)
    hosts = [reconcile.Host(f"cbm-{name}-manager", "manager", private_ip, "srv-1"),
             reconcile.Host(f"cbm-{name}-worker-0", "worker", "10.0.0.6", "srv-2")]
    DeploymentFiles(name).ensure_ssh_key()
    inventory.write(spec, hosts, manager_ip, "/dev/vdb", "vol-1")
    if ssh_port:
        data = yaml.safe_load(spec.inventory_path.read_text())
        data["all"]["children"]["manager"]["hosts"][f"cbm-{name}-manager"]["ansible_port"] = ssh_port
        spec.inventory_path.write_text(yaml.safe_dump(data))
    if password is not None:
        files = DeploymentFiles(name)
        files.folder()
        write_private(files.password, password + "\n")
    return path


@pytest.fixture
def manager(isolated):
    """The manager's sshd: a real SSH server on 127.0.0.1 that lets the deployment `dktest`'s key in."""
    with SshServer(DeploymentFiles("dktest").ensure_ssh_key()) as server:
        yield server


def test_settings_point_at_the_tunnel_to_the_manager_and_keep_the_rest(isolated, manager, tmp_path, monkeypatch):
    monkeypatch.setenv("CBM_CATALOG_URL", "http://example.invalid/resto")
    monkeypatch.setenv("CBM_TABLES_SIGS", "sigs_dk")
    monkeypatch.setenv("PGHOST", "elsewhere.invalid")
    path = write_deployment(tmp_path, "127.0.0.1", 12345, "s3cr:et\\pw", ssh_port=manager.port)
    s = deployment.deployment_settings(path)
    dep = deployment.load(path)
    tunnel = deployment.tunnel(dep)
    assert (s.db.host, s.db.port, s.db.name, s.db.user) == ("127.0.0.1", tunnel.port, deployment.DB_NAME,
                                                            deployment.DB_USER)
    assert tunnel.remote == ("10.0.0.5", 12345)        # the manager's private address and the DB port
    assert Path(s.db.password_file) == tmp_path / "state" / "cbm" / "dktest" / "db_password"
    assert s.catalog.url == "http://example.invalid/resto" and s.tables.sigs == "sigs_dk"
    assert s.deployment == "dktest" and s.db.worker_user == deployment.WORKER_USER
    # the host key is pinned in the deployment's known_hosts on first contact
    assert manager.known_hosts_key in dep.files.known_hosts.read_text()
    assert dep.manager_host == "127.0.0.1" and dep.db_port == 12345 and dep.manager.user == "eouser"
    assert Path(dep.manager.key_file) == tmp_path / "state" / "cbm" / "dktest" / "id_ed25519"


def test_env_uses_a_private_pgpass_and_never_the_password_itself(isolated, manager, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "must-not-survive")
    password = "s3cr:et\\pw"
    path = write_deployment(tmp_path, "127.0.0.1", 12345, password, ssh_port=manager.port)
    with backup.target(str(path), None) as (_settings, env, _folder):
        pass
    port = deployment.tunnel(deployment.load(path)).port
    assert env["PGHOST"] == "127.0.0.1" and env["PGPORT"] == str(port)
    assert env["PGDATABASE"] == deployment.DB_NAME and env["PGUSER"] == deployment.DB_USER
    assert "PGPASSWORD" not in env
    passfile = Path(env["PGPASSFILE"])
    assert passfile == tmp_path / "state" / "cbm" / "dktest" / "pgpass"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    # libpq's escaping: ':' and '\' inside a field are backslash-escaped
    assert passfile.read_text() == f"127.0.0.1:{port}:*:postgres:s3cr\\:et\\\\pw\n"
    assert not any(password in v for k, v in env.items())


def test_a_deployment_that_is_not_up_is_one_line(isolated, tmp_path):
    folder = tmp_path / "inv"
    folder.mkdir()
    path = folder / "deployment.yml"
    path.write_text(yaml.safe_dump(spec_data()))
    with pytest.raises(UserError, match="run cbm up") as err:
        deployment.deployment_settings(path)
    assert "\n" not in str(err.value)
    assert_one_line_error(run_cbm("db", "backup", str(path)), "run cbm up", str(path), code=2)

    # up, but never configured: no password yet
    (folder / "deployment.yml").unlink()
    path = write_deployment(tmp_path, "203.0.113.7", 12345, password=None, name="nopw")
    with pytest.raises(UserError, match="no database password") as err:
        deployment.deployment_settings(path)
    assert "configure" in str(err.value)


def test_backup_through_a_spec_reaches_the_database_through_the_tunnel(postgis, isolated, manager, tmp_path):
    # the manager sees PostGIS at 127.0.0.1:<port>; this machine only through the SSH tunnel
    path = write_deployment(tmp_path, "127.0.0.1", postgis.port, postgis.password, ssh_port=manager.port,
                            private_ip="127.0.0.1")
    env = {**isolated, "PGHOST": "", "PGPORT": "", "PGPASSFILE": str(tmp_path / "none")}
    proc = run_cbm("db", "backup", str(path), env=env)
    assert proc.returncode == 0, proc.stderr
    dumps = list((tmp_path / "state" / "cbm" / "dktest" / "backups").glob("*.dump"))
    assert len(dumps) == 1 and dumps[0].read_bytes()[:5] == b"PGDMP"
    assert stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
    tunnelled = re.compile(rf"127\.0\.0\.1:\d+/postgres as postgres, tunnelled over SSH to 127\.0\.0\.1:{postgis.port}"
                           rf" on the manager cbm-dktest-manager \(eouser@127\.0\.0\.1\)")
    assert tunnelled.search(proc.stdout), proc.stdout
    assert manager.forwarded >= 2               # psycopg2 (the database's size) and pg_dump
    assert postgis.password not in proc.stdout + proc.stderr
    # the same deployment chosen with --deployment / $CBM_DEPLOYMENT (like every data command)
    for how in (["--deployment", str(path)], []):
        extra = {} if how else {"CBM_DEPLOYMENT": str(path)}
        proc = run_cbm("db", "backup", *how, "--out", str(tmp_path / f"b{len(how)}.dump"), env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        assert tunnelled.search(proc.stdout), proc.stdout
    shutil.rmtree(tmp_path / "state" / "cbm" / "dktest" / "backups")


def test_the_tunnel_connects_again_after_a_drop_and_refuses_another_host_key(postgis, isolated, manager, tmp_path):
    path = write_deployment(tmp_path, "127.0.0.1", postgis.port, postgis.password, ssh_port=manager.port,
                            private_ip="127.0.0.1")
    settings = deployment.deployment_settings(path)

    def select_one():
        with psycopg2.connect(host=settings.db.host, port=settings.db.port, user="postgres", dbname="postgres",
                              password=postgis.password, connect_timeout=10) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()[0]

    assert select_one() == 1
    manager.stop()                               # the manager reboots: SSH and its channels are cut
    with pytest.raises(psycopg2.OperationalError):
        select_one()
    manager.start()                              # back, same address and host key
    assert select_one() == 1                     # the same local port works again, nothing to redo
    assert deployment.deployment_settings(path).db.port == settings.db.port

    manager.stop()
    with SshServer(DeploymentFiles("dktest").ensure_ssh_key(), port=manager.port):   # another host key
        with pytest.raises(psycopg2.OperationalError):
            select_one()
        with pytest.raises(CbmError, match="host key is not the one pinned") as err:
            deployment.deployment_settings(path)
    assert "\n" not in str(err.value) and "cbm-dktest-manager" in str(err.value)
