"""`cbm upgrade SPEC [--batch N] [--check] [--no-backup] [--yes]`: rolling upgrade of a deployment
(the steps and exit codes: provision/ops/upgrade.py)."""

from __future__ import annotations

from cbm.cli import add_command
from cbm.terminal import confirm
from provision.ops import upgrade

REFUSAL = "upgrade: refusing to upgrade without confirmation: run it on a terminal or pass --yes"


def cmd_upgrade(args) -> int:
    return upgrade.upgrade(args.spec, batch=args.batch, check=args.check, backup=not args.no_backup,
                           confirm=None if args.yes else (lambda question: confirm(question, REFUSAL)),
                           config=args.config)


def register(sub) -> None:
    """Add the `cbm upgrade` command."""
    p = add_command(sub, "upgrade", cmd_upgrade,
                    "rolling upgrade of the deployment's hosts (packages, Docker Engine, reboots): database "
                    "backup, the manager, then the workers in drained batches (playbooks/upgrade.yml)")
    p.add_argument("spec", metavar="SPEC", help="the deployment spec (inventories/<name>/deployment.yml)")
    p.add_argument("--batch", metavar="N", type=int, default=1,
                   help="workers upgraded at the same time (default 1; fewer than the workers, so that "
                        "the swarm keeps running)")
    p.add_argument("--check", action="store_true",
                   help="report what would change (no backup, no drain, no upgrade, no reboot)")
    p.add_argument("--no-backup", action="store_true", help="skip the database backup before the upgrade")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
