"""`cbm maintain ...`: the maintenance of sigs and hists, partition by partition (extractor/maintain.py).
All of it acts on the database of the settings, or a deployment's with --deployment SPEC."""

from __future__ import annotations

import time

from cbm import context
from cbm.cli import add_command, add_group
from cbm.terminal import human_duration, live
from extractor import db, maintain


def cmd_clouded(args) -> int:
    classes = maintain.parse_classes(args.classes)
    s = context.settings(args)
    label = ",".join(map(str, classes))
    conn = db.connect(s)
    try:
        t0 = time.monotonic()
        with live(f"counting the sigs of observations with only SCL classes {label}") as update:
            batches = maintain.clouded_plan(conn, s, classes, progress=update)
        conn.commit()
        total = sum(b.rows for b in batches)
        obsids = sum(len(b.obsids) for b in batches)
        print(f"{total:,} sigs rows of {obsids} observations are of parcels with only SCL classes {label} "
              f"(counted in {human_duration(time.monotonic() - t0)})")
        if args.dry_run or not total:
            print("dry run: nothing deleted" if args.dry_run else "nothing to delete")
            return 0
        t0 = time.monotonic()
        with live("deleting", total=total) as update:
            deleted = maintain.delete_clouded(conn, s, classes, batches, progress=update)
        print(f"deleted {deleted:,} sigs rows in {human_duration(time.monotonic() - t0)} "
              f"({len(batches)} transactions; hists untouched); cbm maintain vacuum makes the space reusable")
    finally:
        conn.close()
    return 0


def cmd_vacuum(args) -> int:
    s = context.settings(args)
    conn = db.connect(s)
    try:
        t0 = time.monotonic()
        with live("vacuum analyze") as update:
            done = maintain.vacuum(conn, s, progress=update)
    finally:
        conn.close()
    print(f"vacuum analyze: {len(done)} tables in {human_duration(time.monotonic() - t0)}")
    return 0


def cmd_cluster(args) -> int:
    s = context.settings(args)
    conn = db.connect(s)
    try:
        items = maintain.cluster_plan(conn, s)
        for item in items:
            verb = "rewrite" if item.rewrite else "skip"
            print(f"  {verb:<8}{item.partition:<28}{item.size / 1e9:8.2f} GB  {item.reason}")
        todo = [i for i in items if i.rewrite]
        with conn.cursor() as cur:
            free = maintain.free_disk(cur)
        need = max((i.size for i in todo), default=0) * 1.1
        print(f"the database server has {free / 1e9:.1f} GB free"
              + (f"; the largest rewrite needs {need / 1e9:.1f} GB" if todo else ""))
        if args.dry_run or not todo:
            print("dry run: nothing rewritten" if args.dry_run else "every partition is in order")
            return 0
        t0 = time.monotonic()
        with live("cluster", total=len(todo)) as update:
            done = maintain.cluster(conn, s, items, progress=update)
    finally:
        conn.close()
    print(f"clustered {len(done)} partitions on (pid, obsid) in {human_duration(time.monotonic() - t0)}")
    return 0


def register(sub):
    group = add_group(sub, "maintain", "maintenance of sigs and hists: clouded observations, vacuum, cluster")
    p = add_command(group, "clouded", cmd_clouded,
                    "delete the sigs of parcel observations whose SCL histogram holds only the given classes "
                    "(hists stay)")
    p.add_argument("--classes", default=",".join(map(str, maintain.DEFAULT_CLASSES)), metavar="LIST",
                   help="SCL classes, comma separated (default: 9, cloud high probability, the seed's rule)")
    p.add_argument("--dry-run", action="store_true", help="count the rows only")
    add_command(group, "vacuum", cmd_vacuum, "VACUUM (ANALYZE) every partition of sigs and hists")
    p = add_command(group, "cluster", cmd_cluster,
                    "rewrite the partitions of sigs and hists in (pid, obsid) order, one at a time, "
                    "after a free-disk check")
    p.add_argument("--dry-run", action="store_true", help="list what would be rewritten and why")
    return group
