"""Reaching a deployment's database from the operator's machine, in one place.

Given a spec path, everything the operations commands (db backup/restore, status, onboard, extract)
need to talk to the deployment's PostGIS:

    spec             provision.spec.load(SPEC)
    state folder     ${XDG_STATE_HOME:-~/.local/state}/cbm/<name>/         (provision.state)
    inventory        hosts.yml next to the spec, written by `cbm up`: group `manager` with
                     ansible_host = the floating IP; cbm_db_port
    password         <state folder>/db_password (0600), generated once by the Ansible postgis role
                     (playbooks/site.yml: postgis_password_file = {{ cbm_state_dir }}/db_password)
    pgpass           <state folder>/pgpass (0600), rewritten from the password for libpq tools

The password only ever travels in files: `deployment_settings` sets db.password_file (psycopg2 reads
it), `deployment_env` / `libpq_env` point PGPASSFILE at a 0600 pgpass file (pg_dump, pg_restore,
psql). Never PGPASSWORD, never argv.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import yaml

from extractor.errors import UserError
from extractor import settings as settings_mod
from extractor.settings import Settings, read_secret_file
from provision import spec as specs
from provision import state

# File names in the deployment's state folder (the postgis role writes PASSWORD_FILE).
PASSWORD_FILE = "db_password"
PGPASS_FILE = "pgpass"
# The database and role the postgis and schema roles set up (roles/schema/defaults/main.yml).
DB_NAME = "postgres"
DB_USER = "postgres"


@dataclass(frozen=True)
class Deployment:
    spec: specs.Spec
    state_dir: Path
    inventory_path: Path
    manager_name: str
    manager_host: str        # the floating IP (ansible_host of the manager)
    db_port: int
    ssh_user: str
    ssh_key: Path            # the deployment's private key (0600, in the state folder)
    known_hosts: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def password_file(self) -> Path:
        return password_file(self.spec.name)


def spec_of(args) -> str | None:
    """The deployment a command acts on: its SPEC argument, else --deployment SPEC, else $CBM_DEPLOYMENT
    (the same choice as extractor.cli.load_settings); None = the database of the normal settings."""
    return getattr(args, "spec", None) or getattr(args, "deployment", None) or os.environ.get("CBM_DEPLOYMENT") \
        or None


def password_file(name: str) -> Path:
    """Where the postgis role keeps the deployment's postgres password (0600)."""
    return state.state_root() / name / PASSWORD_FILE


def _inventory_manager(path: Path, spec) -> tuple[str, dict, dict]:
    """(name, host vars, group vars) of the manager in an inventory written by `cbm up`."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise UserError(f"{path}: the inventory is not valid YAML; run cbm up {spec.where} to rewrite it") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the inventory ({exc.strerror})") from None
    root = (data or {}).get("all") if isinstance(data, dict) else None
    if not isinstance(root, dict):
        raise UserError(f"{path}: not an inventory written by cbm up; run cbm up {spec.where} to rewrite it")
    group_vars = root.get("vars") or {}
    children = root.get("children") or {}
    hosts = ((children.get("manager") or {}).get("hosts") or {}) if isinstance(children, dict) else {}
    for name, host_vars in hosts.items():
        host_vars = host_vars or {}
        if host_vars.get("ansible_host"):
            return name, host_vars, group_vars
    raise UserError(f"{path}: no manager host with an address; run cbm up {spec.where} first")


def load(spec_path: str | Path) -> Deployment:
    """The deployment of a spec, as `cbm up` left it on this machine; UserError (one line) if not up."""
    spec = specs.load(spec_path)
    inventory = spec.inventory_path
    if not inventory.is_file():
        raise UserError(f"deployment {spec.name} has no inventory ({inventory}); run cbm up {spec.where} first")
    name, host_vars, group_vars = _inventory_manager(inventory, spec)
    port = host_vars.get("cbm_db_port", group_vars.get("cbm_db_port", spec.db_port))
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise UserError(f"{inventory}: cbm_db_port {port!r} is not a port; run cbm up {spec.where} again") from None
    root = state.state_root() / spec.name
    key = host_vars.get("ansible_ssh_private_key_file", group_vars.get("ansible_ssh_private_key_file"))
    return Deployment(
        spec=spec, state_dir=root, inventory_path=inventory, manager_name=name,
        manager_host=str(host_vars["ansible_host"]), db_port=port,
        ssh_user=str(host_vars.get("ansible_user", group_vars.get("ansible_user", spec.ssh_user))),
        ssh_key=Path(key) if key else root / state.KEY_FILE, known_hosts=root / "known_hosts")


def _require_password(dep: Deployment) -> Path:
    path = dep.password_file
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
    state.write_private(path, line)
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
        yield libpq_env(settings, folder / PGPASS_FILE)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def deployment_env(spec_path: str | Path, config: str | None = None) -> dict:
    """PG* variables reaching the deployment's database; PGPASSFILE = <state folder>/pgpass (0600).

    Only the PG* variables (plus PGCONNECT_TIMEOUT, PGAPPNAME); merge it into os.environ to run a tool."""
    settings = deployment_settings(spec_path, config)
    dep_dir = state.state_dir(settings.deployment)
    return libpq_env(settings, dep_dir / PGPASS_FILE, base={})


def manager_ssh(dep: Deployment, timeout: float = 10):
    """A fabric Connection to the manager with the deployment's key; host keys pinned in the state folder
    (accepted on first contact, like the inventory's StrictHostKeyChecking=accept-new)."""
    from fabric import Connection

    conn = Connection(dep.manager_host, user=dep.ssh_user, connect_timeout=timeout,
                      connect_kwargs={"key_filename": str(dep.ssh_key), "look_for_keys": False,
                                      "allow_agent": False, "banner_timeout": timeout, "auth_timeout": timeout})
    if not dep.known_hosts.exists():
        state.write_private(dep.known_hosts, "")
    conn.client.load_host_keys(str(dep.known_hosts))
    return conn
