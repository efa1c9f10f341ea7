"""Reaching a deployment's database and manager from the operator's machine, in one place.

Given a spec path, everything the operations (db backup/restore, status, onboard, extract, upgrade)
need to talk to the deployment's PostGIS and its manager:

    spec             provision.cloud.spec.load(SPEC)
    local files      provision.hosts.files.DeploymentFiles: key, known_hosts, db_password, pgpass
    inventory        hosts.yml next to the spec, written by `cbm up` (provision.hosts.inventory.read):
                     group `manager` with ansible_host = the floating IP; cbm_db_port
    password         db_password (0600) in the state folder, generated once by `cbm configure`
                     (the postgis role reads it: postgis_password_file = {{ cbm_state_dir }}/db_password)

The password only ever travels in files: `deployment_settings` sets db.password_file (psycopg2 reads
it), `libpq_env` points PGPASSFILE at a 0600 pgpass file (pg_dump, pg_restore, psql). Never
PGPASSWORD, never argv.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from extractor import settings as settings_mod
from extractor.errors import UserError
from extractor.settings import Settings, read_secret_file
from provision.cloud import spec as specs
from provision.hosts import inventory as inventories
from provision.hosts import ssh
from provision.hosts.files import DeploymentFiles, write_private

# The database and role the postgis and schema roles set up (roles/schema/defaults/main.yml).
DB_NAME = "postgres"
DB_USER = "postgres"


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

    def manager_ssh(self, timeout: float = 10):
        """A fabric Connection to the manager with the deployment's key; host keys pinned in the state
        folder (accepted on first contact, like the inventory's StrictHostKeyChecking=accept-new)."""
        return ssh.connect(self.manager, timeout, known_hosts=self.files.ensure_known_hosts())


def load(spec_path: str | Path) -> Deployment:
    """The deployment of a spec, as `cbm up` left it on this machine; UserError (one line) if not up."""
    spec = specs.load(spec_path)
    inventory = inventories.read(spec)
    port = inventory.manager.vars.get("cbm_db_port", spec.db_port)
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise UserError(f"{inventory.path}: cbm_db_port {port!r} is not a port; run cbm up {spec.where} again") from None
    return Deployment(spec=spec, files=DeploymentFiles(spec.name), inventory=inventory, db_port=port)


def _require_password(dep: Deployment) -> Path:
    path = dep.files.password
    if not path.is_file():
        raise UserError(f"deployment {dep.name} has no database password on this machine ({path}); "
                        f"run cbm configure {dep.spec.where} (cbm up does it too) first")
    return path


def deployment_settings(spec_path: str | Path, config: str | None = None) -> Settings:
    """The normal settings (file + CBM_* variables) with the database pointed at the deployment."""
    dep = load(spec_path)
    settings = settings_mod.load(config)
    db = vars(settings.db).copy()
    db.update(host=dep.manager_host, port=dep.db_port, name=DB_NAME, user=DB_USER,
              password_file=str(_require_password(dep)))
    settings.db = SimpleNamespace(**db)
    settings.deployment = dep.name
    return settings


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
