"""Reaching a deployment's database and manager from the operator's machine, in one place.

Given a spec path, everything the operations (db backup/restore, status, onboard, extract, upgrade)
need to talk to the deployment's PostGIS and its manager:

    spec             provision.cloud.spec.load(SPEC)
    local files      provision.hosts.files.DeploymentFiles: key, known_hosts, db_password, pgpass
    inventory        hosts.yml next to the spec, written by `cbm up` (provision.hosts.inventory.read):
                     group `manager` with ansible_host = the floating IP, private_ip; cbm_db_port
    password         db_password (0600) in the state folder, generated once by `cbm configure`
                     (the postgis role reads it: postgis_password_file = {{ cbm_state_dir }}/db_password)

The database is private: PostGIS publishes its port on the manager's private address only, and this
machine reaches it through an SSH tunnel to the manager (provision/hosts/tunnel.py) with the host key
pinned in the state folder. `tunnel(dep)` is the process's one tunnel of a deployment (a local port on
127.0.0.1, SSH connected again by itself after a drop); `deployment_settings` points db.host/db.port at
it, so every controller-side access (psycopg2, pg_dump, psql) goes through it as the owner role.

The password only ever travels in files: `deployment_settings` sets db.password_file (psycopg2 reads
it), `libpq_env` points PGPASSFILE at a 0600 pgpass file (pg_dump, pg_restore, psql). Never
PGPASSWORD, never argv.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from extractor import db as db_mod
from extractor import settings as settings_mod
from extractor.errors import UserError
from extractor.settings import Settings, read_secret_file
from provision.cloud import spec as specs
from provision.hosts import inventory as inventories
from provision.hosts import ssh
from provision.hosts.files import DeploymentFiles, write_private
from provision.hosts.tunnel import Tunnel

# The database and roles the postgis and schema roles set up (roles/schema/defaults/main.yml): the
# owner (the controller's commands) and the extraction workers' role (extractor/grants.py).
DB_NAME = "postgres"
DB_USER = "postgres"
WORKER_USER = "cbm_worker"


@dataclass(frozen=True)
class Deployment:
    spec: specs.Spec
    files: DeploymentFiles
    inventory: inventories.Inventory
    db_port: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def manager(self) -> inventories.InventoryHost:
        return self.inventory.manager

    @property
    def manager_host(self) -> str:
        """The manager's floating IP (ansible_host)."""
        return self.manager.address

    @property
    def db_address(self) -> tuple[str, int]:
        """Where PostGIS listens, as the manager sees it: its private address (roles/postgis publishes
        the port there only) and the deployment's DB port."""
        private = self.manager.vars.get("private_ip")
        if not private:
            raise UserError(f"{self.inventory.path}: the manager has no private_ip; run cbm up {self.spec.where} again")
        return str(private), self.db_port

    def manager_ssh(self, timeout: float = 10):
        """A fabric Connection to the manager with the deployment's key; host keys pinned in the state
        folder (accepted on first contact, like the inventory's StrictHostKeyChecking=accept-new)."""
        return ssh.connect(self.manager, timeout, known_hosts=self.files.ensure_known_hosts())


def load(spec_path: str | Path) -> Deployment:
    """The deployment of a spec, as `cbm up` left it on this machine; UserError (one line) if not up."""
    return of_spec(specs.load(spec_path))


def of_spec(spec: specs.Spec) -> Deployment:
    """load() for a spec already read."""
    inventory = inventories.read(spec)
    port = inventory.manager.vars.get("cbm_db_port", spec.db_port)
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise UserError(f"{inventory.path}: cbm_db_port {port!r} is not a port; run cbm up {spec.where} again") from None
    return Deployment(spec=spec, files=DeploymentFiles(spec.name), inventory=inventory, db_port=port)


def _require_password(dep: Deployment) -> Path:
    return _require_secret(dep, dep.files.password, "database password", " (cbm up does it too)")


def require_worker_password(dep: Deployment) -> Path:
    """The worker role's password file (made by `cbm configure`, which also makes the role)."""
    return _require_secret(dep, dep.files.worker_password, "password of the workers' database role", "")


def _require_secret(dep: Deployment, path: Path, what: str, also: str) -> Path:
    """The secret file `cbm configure` writes, or a one-line UserError saying to run it."""
    if not path.is_file():
        raise UserError(f"deployment {dep.name} has no {what} on this machine ({path}); "
                        f"run cbm configure {dep.spec.where}{also} first")
    return path


# -- the tunnel ------------------------------------------------------------------------------
_TUNNELS: dict[tuple, Tunnel] = {}
_TUNNELS_LOCK = threading.Lock()


def tunnel(dep: Deployment) -> Tunnel:
    """The process's SSH tunnel to the deployment's database (one per manager and address; it listens
    until the process ends and connects SSH on its first use)."""
    key = (dep.name, dep.manager.address, dep.manager.port, dep.manager.user, dep.db_address)
    with _TUNNELS_LOCK:
        found = _TUNNELS.get(key)
        if found is None or found.closed:
            found = _TUNNELS[key] = Tunnel(dep.manager_ssh, dep.db_address, where=f"the manager {dep.manager.where()}")
        return found


@atexit.register
def close_tunnels() -> None:
    with _TUNNELS_LOCK:
        for t in _TUNNELS.values():
            t.close()
        _TUNNELS.clear()


def deployment_settings(spec_path: str | Path, config: str | None = None) -> Settings:
    """The normal settings (file + CBM_* variables) with the database pointed at the deployment: the
    local end of its SSH tunnel (connected here, so an unreachable manager is one clear line), as the
    owner role."""
    dep = load(spec_path)
    settings = settings_mod.load(config)
    password = _require_password(dep)
    t = tunnel(dep)
    t.check()
    db = vars(settings.db).copy()
    db.update(host=t.host, port=t.port, name=DB_NAME, user=DB_USER, password_file=str(password),
              worker_user=WORKER_USER,
              worker_password_file=str(dep.files.worker_password) if dep.files.worker_password.is_file() else None)
    settings.db = SimpleNamespace(**db)
    settings.deployment = dep.name
    settings.db_tunnel = t
    return settings


def describe(settings: Settings) -> str:
    """Where the settings' database is, for messages: db.describe, and for a deployment the way there."""
    t = getattr(settings, "db_tunnel", None)
    where = db_mod.describe(settings)
    if t is None:
        return where
    return f"{where}, tunnelled over SSH to {t.remote[0]}:{t.remote[1]} on {t.where}"


def _pgpass_field(value) -> str:
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


def write_pgpass(path: Path, settings: Settings) -> Path:
    """A 0600 pgpass file holding settings.db.password_file's password for the settings' server."""
    db = settings.db
    password = read_secret_file(db.password_file, "db.password_file")
    line = ":".join(_pgpass_field(v if v not in (None, "") else "*")
                    for v in (db.host, db.port, "*", db.user)) + ":" + _pgpass_field(password) + "\n"
    write_private(path, line)
    return path


def libpq_env(settings: Settings, pgpass: Path | None = None, base: dict | None = None) -> dict:
    """Environment for libpq tools (pg_dump, pg_restore, psql) reaching the settings' database.

    Keys set in the settings become PG* variables; keys left empty keep the caller's PG* variables.
    With db.password_file, PGPASSFILE points at `pgpass` (written 0600) and an inherited PGPASSWORD is
    dropped; we never set PGPASSWORD ourselves."""
    env = dict(os.environ if base is None else base)
    db = settings.db
    if db.password_file:
        env.pop("PGPASSWORD", None)  # it would win over the pgpass file
    for var, value in (("PGHOST", db.host), ("PGPORT", db.port), ("PGDATABASE", db.name), ("PGUSER", db.user)):
        if value not in (None, ""):
            env[var] = str(value)
    env["PGCONNECT_TIMEOUT"] = str(db.connect_timeout)
    env.setdefault("PGAPPNAME", "cbm")
    if db.password_file:
        if pgpass is None:
            raise ValueError("a pgpass path is needed when db.password_file is set")
        env["PGPASSFILE"] = str(write_pgpass(pgpass, settings))
    return env


@contextlib.contextmanager
def libpq_environment(settings: Settings):
    """libpq_env with a throwaway pgpass file (in a 0700 temporary folder) removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="cbm-pgpass-"))
    try:
        yield libpq_env(settings, folder / "pgpass")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
