"""`cbm up | plan | down SPEC`: a deployment's cloud resources (provision/ops/lifecycle.py)."""

from __future__ import annotations

from pathlib import Path

from cbm.cli import add_command
from cbm.terminal import confirm, live
from provision.cloud import spec as specs
from provision.cloud.progress import console
from provision.ops import configure, lifecycle

DOWN_REFUSAL = "down: refusing to delete without confirmation: run it on a terminal or pass --yes"


def print_up(result, inventory_path: Path | None) -> None:
    name = result.spec_name
    if not result.changes:
        print(f"No changes: deployment {name} is up to date.")
    elif result.dry_run:
        print(f"Plan for deployment {name}: {len(result.changes)} change(s)")
        for change in result.changes:
            print(change.line())
        print("Dry run: nothing was changed (run `cbm up SPEC` to apply).")
    else:   # each change was reported on stderr as it was made
        print(f"Deployment {name}: {len(result.changes)} change(s) made.")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if inventory_path:
        print(f"Inventory: {inventory_path} (manager at {result.manager_ip})")


def cmd_up(args) -> int:
    spec = specs.load(args.spec)
    print_up(*lifecycle.up(spec, dry_run=args.dry_run, replace_volume=args.replace_volume))
    if args.dry_run or args.no_configure:
        return 0
    return configure.configure(spec)


def cmd_plan(args) -> int:
    print_up(*lifecycle.up(specs.load(args.spec), dry_run=True))
    return 0


def cmd_down(args) -> int:
    spec = specs.load(args.spec)
    result = lifecycle.down(spec, keep_volume=args.keep_volume, yes=args.yes,
                            confirm=lambda question: confirm(question, DOWN_REFUSAL),
                            take_backup=not args.no_backup, config=getattr(args, "config", None), progress=live)
    if result.deleted:
        print(f"Deleted {len(result.deleted)} resource(s) of deployment {spec.name}.")
    return 0


def register(sub) -> None:
    """Add `cbm up`, `cbm plan` and `cbm down`."""
    p = add_command(sub, "up", cmd_up, help="create or repair a deployment's cloud resources, then configure its "
                                             "hosts (Docker on the volume, PostGIS, schema, swarm); idempotent")
    p.add_argument("spec", metavar="SPEC", help="deployment spec (e.g. inventories/<name>/deployment.yml)")
    p.add_argument("--dry-run", action="store_true", help="only print what would change (same as `cbm plan`)")
    p.add_argument("--no-configure", action="store_true",
                   help="only the cloud resources; configure later with `cbm configure SPEC`")
    p.add_argument("--replace-volume", action="store_true",
                   help="delete and recreate the data volume when it is in state error although it was attached "
                        "before (it may hold the database: its data is lost). Without it `cbm up` stops on such a "
                        "volume; a volume in error that was never attached is replaced anyway")
    p = add_command(sub, "plan", cmd_plan, help="print what `cbm up` would change; touches nothing")
    p.add_argument("spec", metavar="SPEC", help="deployment spec")
    p = add_command(sub, "down", cmd_down, help="delete exactly what a deployment created in the cloud; unless "
                                                 "--keep-volume, its database is backed up first")
    p.add_argument("spec", metavar="SPEC", help="deployment spec")
    p.add_argument("--keep-volume", action="store_true",
                   help="keep the data volume (a later `cbm up` re-attaches it with its data)")
    p.add_argument("--no-backup", action="store_true",
                   help="do not back up the database first (by default, unless --keep-volume, `cbm down` dumps "
                        "it to the deployment's state folder, backups/<UTC time>.dump, and stops if that fails)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
