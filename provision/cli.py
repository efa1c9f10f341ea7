"""Subcommands of the cloud lifecycle: up, plan, down, configure, sandbox, ..."""

from __future__ import annotations

from cbm.cli import add_command


def register(sub) -> None:
    """Add the cloud lifecycle commands to `cbm`."""
    from provision import configure, onboard, status, upgrade
    from provision.sandbox import cli as sandbox_cli

    p = add_command(sub, "up", cmd_up, help="create or repair a deployment's cloud resources, then configure its "
                                             "hosts (Docker on the volume, PostGIS, schema, swarm); idempotent")
    p.add_argument("spec", metavar="SPEC", help="deployment spec (e.g. inventories/<name>/deployment.yml)")
    p.add_argument("--dry-run", action="store_true", help="only print what would change (same as `cbm plan`)")
    p.add_argument("--no-configure", action="store_true",
                   help="only the cloud resources; configure later with `cbm configure SPEC`")
    p = add_command(sub, "plan", cmd_plan, help="print what `cbm up` would change; touches nothing")
    p.add_argument("spec", metavar="SPEC", help="deployment spec")
    p = add_command(sub, "down", cmd_down, help="delete exactly what a deployment created in the cloud")
    p.add_argument("spec", metavar="SPEC", help="deployment spec")
    p.add_argument("--keep-volume", action="store_true",
                   help="keep the data volume (a later `cbm up` re-attaches it with its data)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    sandbox_cli.register(sub)
    configure.register(sub)
    status.register(sub)
    onboard.register(sub)
    upgrade.register(sub)


def print_up(result) -> None:
    from provision.progress import console

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
    if result.inventory:
        print(f"Inventory: {result.inventory} (manager at {result.manager_ip})")


def provision_up(spec, dry_run: bool = False):
    """The provisioning half of `cbm up`; the end-to-end flow extends cmd_up after it."""
    from provision import openstack

    result = openstack.up(spec, dry_run=dry_run)
    print_up(result)
    return result


def cmd_up(args) -> int:
    from provision import spec as specs

    spec = specs.load(args.spec)
    provision_up(spec, dry_run=args.dry_run)
    if args.dry_run or args.no_configure:
        return 0
    from provision import configure

    return configure.configure(spec)


def cmd_plan(args) -> int:
    from provision import spec as specs

    provision_up(specs.load(args.spec), dry_run=True)
    return 0


def cmd_down(args) -> int:
    from provision import openstack
    from provision import spec as specs

    spec = specs.load(args.spec)
    result = openstack.down(spec, keep_volume=args.keep_volume, yes=args.yes)
    if result.deleted:
        print(f"Deleted {len(result.deleted)} resource(s) of deployment {spec.name}.")
    return 0
