"""`cbm db ...`: the CbM database. `init` creates or updates the schema; `backup` and `restore` dump it
to a file on this machine and back (provision/ops/backup.py)."""

from __future__ import annotations

from cbm import context
from cbm.cli import add_command, add_group
from cbm.terminal import confirm, live
from extractor import db, partitions, schema
from provision.ops import backup
from provision.ops.backup import human_size


def cmd_init(args) -> int:
    s = context.settings(args)
    if args.dry_run:
        with db.session(s) as conn, conn.cursor() as cur:
            for line in partitions.describe(partitions.plan(cur, s)):
                print(line)
        print("then: create or update the other tables, indexes and the partitions ahead of the catalogue "
              "(short locks; COPY and reads go on)")
        return 0
    with db.session(s) as conn:
        schema.init_schema(conn, s)
    conn = db.connect(s)
    try:
        upgraded = partitions.upgrade(conn, s, report=lambda line: print(line, flush=True))
    finally:
        conn.close()
    if upgraded:  # the new partitioned tables: partitions ahead, the grants of init_schema
        with db.session(s) as conn:
            schema.init_schema(conn, s)
    print(f"schema ready in {db.describe(s)} (schema {s.db.schema})")
    return 0


def cmd_backup(args) -> int:
    out, facts = backup.run_backup(context.deployment_of(args), args.out, args.config, progress=live)
    print(backup.summary(out, facts))
    return 0


def cmd_restore(args) -> int:
    refusal = "db restore: refusing to overwrite without confirmation: run it on a terminal or pass --yes"
    facts = backup.restore_file(args.file, context.deployment_of(args), args.config,
                                confirm=(lambda q: True) if args.yes else (lambda q: confirm(q, refusal)),
                                progress=live)
    print(f"restore: {facts['path']} ({human_size(facts['size'])}, {facts['objects']} objects) into "
          f"{facts['where']} in {facts['seconds']:.1f} s")
    return 0


def register(sub):
    """Add the `cbm db` group and its commands; returns the group's subparsers."""
    group = add_group(sub, "db", "the CbM database: schema, backups")
    p = add_command(group, "init", cmd_init, "create or update the CbM tables (idempotent; upgrades a "
                    "seed-layout sigs/hists in place to the partitioned layout)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the upgrade steps, the locks they take and how long, and change nothing")
    p = add_command(group, "backup", cmd_backup, "dump the database to a file on this machine (pg_dump -Fc)")
    p.add_argument("spec", metavar="SPEC", nargs="?",
                   help="deployment spec (default: --deployment, $CBM_DEPLOYMENT, else the database of the settings)")
    p.add_argument("--out", metavar="FILE",
                   help="the dump file (default: <state folder>/backups/<UTC time>.dump)")
    p = add_command(group, "restore", cmd_restore,
                    "restore a dump of cbm db backup into the database (replaces the objects it contains)")
    p.add_argument("file", metavar="FILE", help="a dump written by cbm db backup")
    p.add_argument("spec", metavar="SPEC", nargs="?",
                   help="deployment spec (default: --deployment, $CBM_DEPLOYMENT, else the database of the settings)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return group
