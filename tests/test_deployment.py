"""provision/ops/deployment.py: from a spec to the deployment's database, with a spec, a state folder and an
inventory written by the tests (the real inventory writer; no cloud needed). The last test backs up
the real throwaway PostGIS through a spec whose inventory points at it."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import yaml

from extractor.errors import UserError
from conftest import assert_one_line_error, run_cbm
from provision.cloud import reconcile
from provision.cloud import spec as specs
from provision.hosts import inventory
from provision.hosts.files import DeploymentFiles, write_private
from provision.ops import backup, deployment


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
                     name: str = "dktest") -> Path:
    folder = tmp_path / "inventories" / name
    folder.mkdir(parents=True)
    path = folder / "deployment.yml"
    path.write_text(yaml.safe_dump(spec_data(name, db_port)))
    spec = specs.load(path)
    hosts = [reconcile.Host(f"cbm-{name}-manager", "manager", "10.0.0.5", "srv-1"),
             reconcile.Host(f"cbm-{name}-worker-0", "worker", "10.0.0.6", "srv-2")]
    inventory.write(spec, hosts, manager_ip, "/dev/vdb", "vol-1")
    if password is not None:
        files = DeploymentFiles(name)
        files.folder()
        write_private(files.password, password + "\n")
    return path


def test_settings_point_at_the_manager_and_keep_the_rest(isolated, tmp_path, monkeypatch):
    monkeypatch.setenv("CBM_CATALOG_URL", "http://example.invalid/resto")
    monkeypatch.setenv("CBM_TABLES_SIGS", "sigs_dk")
    monkeypatch.setenv("PGHOST", "elsewhere.invalid")
    path = write_deployment(tmp_path, "203.0.113.7", 12345, "s3cr:et\\pw")
    s = deployment.deployment_settings(path)
    assert (s.db.host, s.db.port, s.db.name, s.db.user) == ("203.0.113.7", 12345, deployment.DB_NAME,
                                                            deployment.DB_USER)
    assert Path(s.db.password_file) == tmp_path / "state" / "cbm" / "dktest" / "db_password"
    assert s.catalog.url == "http://example.invalid/resto" and s.tables.sigs == "sigs_dk"
    assert s.deployment == "dktest"

    dep = deployment.load(path)
    assert dep.manager_host == "203.0.113.7" and dep.db_port == 12345 and dep.manager.user == "eouser"
    assert Path(dep.manager.key_file) == tmp_path / "state" / "cbm" / "dktest" / "id_ed25519"


def test_env_uses_a_private_pgpass_and_never_the_password_itself(isolated, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "must-not-survive")
    password = "s3cr:et\\pw"
    path = write_deployment(tmp_path, "203.0.113.7", 12345, password)
    with backup.target(str(path), None) as (_settings, env, _folder):
        pass
    assert env["PGHOST"] == "203.0.113.7" and env["PGPORT"] == "12345"
    assert env["PGDATABASE"] == deployment.DB_NAME and env["PGUSER"] == deployment.DB_USER
    assert "PGPASSWORD" not in env
    passfile = Path(env["PGPASSFILE"])
    assert passfile == tmp_path / "state" / "cbm" / "dktest" / "pgpass"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    # libpq's escaping: ':' and '\' inside a field are backslash-escaped
    assert passfile.read_text() == "203.0.113.7:12345:*:postgres:s3cr\\:et\\\\pw\n"
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


def test_backup_through_a_spec_reaches_the_database_of_its_inventory(postgis, isolated, tmp_path):
    path = write_deployment(tmp_path, "127.0.0.1", postgis.port, postgis.password)
    env = {**isolated, "PGHOST": "", "PGPORT": "", "PGPASSFILE": str(tmp_path / "none")}
    proc = run_cbm("db", "backup", str(path), env=env)
    assert proc.returncode == 0, proc.stderr
    dumps = list((tmp_path / "state" / "cbm" / "dktest" / "backups").glob("*.dump"))
    assert len(dumps) == 1 and dumps[0].read_bytes()[:5] == b"PGDMP"
    assert stat.S_IMODE(dumps[0].stat().st_mode) == 0o600
    assert f"127.0.0.1:{postgis.port}/postgres" in proc.stdout
    assert postgis.password not in proc.stdout + proc.stderr
    # the same deployment chosen with --deployment / $CBM_DEPLOYMENT (like every data command)
    for how in (["--deployment", str(path)], []):
        extra = {} if how else {"CBM_DEPLOYMENT": str(path)}
        proc = run_cbm("db", "backup", *how, "--out", str(tmp_path / f"b{len(how)}.dump"), env={**env, **extra})
        assert proc.returncode == 0, proc.stderr
        assert f"127.0.0.1:{postgis.port}/postgres" in proc.stdout
    shutil.rmtree(tmp_path / "state" / "cbm" / "dktest" / "backups")
