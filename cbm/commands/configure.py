"""`cbm configure SPEC [--check]`: configure the deployment's hosts with Ansible (playbooks/site.yml).

The exit code is ansible-playbook's (0 ok, 2 a host failed, 4 a host unreachable); see
provision/hosts/ansible.py for the run folders and the per-task lines.
"""

from __future__ import annotations

from cbm.cli import add_command
from provision.cloud import spec as specs
from provision.ops import configure


def cmd_configure(args) -> int:
    return configure.configure(specs.load(args.spec), check=args.check)


def register(sub) -> None:
    """Add the `cbm configure` command."""
    p = add_command(sub, "configure", cmd_configure,
                    "configure the deployment's hosts with Ansible: packages, data volume, Docker, "
                    "PostGIS, schema, swarm (playbooks/site.yml)")
    p.add_argument("spec", metavar="SPEC", help="the deployment spec (inventories/<name>/deployment.yml)")
    p.add_argument("--check", action="store_true", help="report what would change, change nothing")
