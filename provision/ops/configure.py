"""Configure a deployment's hosts with Ansible (playbooks/site.yml), and run its other playbooks.

The postgres password and the workers' role password are generated once into the state folder
(db_password, db_worker_password, 0600) and never passed on a command line; the roles read them
from there (no_log).

The database is private (roles/postgis publishes its port on the manager's private address): while
site.yml runs, this process holds an SSH tunnel to the manager (provision/ops/deployment.py) and the
roles reach PostGIS from the controller at its local end (cbm_db_tunnel_host/port): the password
check of the postgis role and `cbm db init` of the schema role. So `ingress.db: []` works.

Optional: `configure.yml` next to the spec holds extra variables for the roles (e.g. the
sandbox builds its PostGIS image on the host instead of pulling one):
    postgis_image_source: build
    postgis_build_base_image: cbm-sandbox/base:bookworm
"""

from __future__ import annotations

import yaml

from extractor.errors import UserError, one_line
from provision.hosts import ansible
from provision.hosts.files import DeploymentFiles
from provision.ops import deployment, extractor_image

EXTRA_VARS_FILE = "configure.yml"


def user_vars(spec) -> dict:
    """The role variables of `configure.yml` next to the spec ({} without one)."""
    path = spec.path.parent / EXTRA_VARS_FILE
    if not path.exists():
        return {}
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {one_line(exc)}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: must be a mapping of role variables (name: value)")
    return values


def role_vars(spec) -> dict:
    """Every playbook's variables: configure.yml, the state folder (the password files in it are made
    here, once), the authorized keys, the networks the database admits over TLS (ingress.db) and the
    extractor image the hosts were last given (site.yml loads it on a worker before it joins the swarm,
    so a worker added during an extraction takes tasks at once)."""
    files = DeploymentFiles(spec.name)
    files.ensure_password()
    files.ensure_worker_password()
    image, archive = extractor_image.archived(files.images) or ("", "")
    return {**user_vars(spec), "cbm_state_dir": str(files.root),
            "cbm_extra_authorized_keys": list(spec.extra_authorized_keys),
            "cbm_db_ingress": list(spec.ingress.db),
            "cbm_extractor_image": image, "cbm_extractor_image_archive": str(archive)}


def run(spec, playbook: str, extravars: dict | None = None, check: bool = False, out=None,
        verb: str = "running", limit: str | None = None) -> int:
    """playbooks/<playbook> on the deployment with the role variables (plus `extravars`)."""
    return ansible.run_playbook(spec, playbook, {**role_vars(spec), **(extravars or {})}, check=check, out=out,
                                verb=verb, limit=limit)


def configure(spec, check: bool = False, out=None) -> int:
    """Run playbooks/site.yml on the deployment; returns 0, or raises CbmError (exit code = runner rc).
    The SSH tunnel to the database connects when a role first uses it (the hosts may still be new)."""
    tunnel = deployment.tunnel(deployment.of_spec(spec))
    return run(spec, "site.yml", extravars={"cbm_db_tunnel_host": tunnel.host, "cbm_db_tunnel_port": tunnel.port},
               check=check, out=out, verb="configuring")
