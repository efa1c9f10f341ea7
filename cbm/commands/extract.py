"""`cbm extract ...`: a worker (`run`, the same options as the worker's entry point
`python -m extractor.extract run`), the preparation of rasterized parcels (`prepare`), and the
extraction on a deployment's swarm (`swarm SPEC`, provision/ops/extraction.py), and scenes with
error statuses put back in the queue (`retry`, extractor/extract/retry.py).
"""

from __future__ import annotations

import contextlib

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cbm import context
from cbm.cli import add_command, add_group
from extractor import db
from extractor.extract import cards, options, retry
from provision.ops import extraction


def cmd_run(args) -> int:
    return options.run(args, context.settings, out=lambda line: print(line, flush=True))


def cmd_prepare(args) -> int:
    from extractor.extract import prepare  # lazy: numba, rasterio and shapely load only for this command

    s = context.settings(args)
    conn = db.connect(s)
    try:
        for line in prepare.prepare(conn, s, aoi=args.aoi, parcels=args.parcels, start=args.start, end=args.end,
                                    cards_wanted=args.card, dry_run=args.dry_run):
            print(line, flush=True)
    finally:
        conn.close()
    return 0


def cmd_retry(args) -> int:
    selection = retry.Selection(args.card, tuple(args.status) if args.status else cards.FINAL_ERRORS)
    s = context.settings(args)
    conn = db.connect(s)
    try:
        counted = retry.count(conn, s, selection)
        for card, res, status, n in counted:
            print(f"{card} run {'SCL' if res == -1 else res}: {n} scene(s) in status {status!r}")
        total = sum(n for *_, n in counted)
        if args.dry_run or not total:
            print(f"{total} scene run(s) to re-queue" + (" (dry run: nothing changed)" if args.dry_run else ""))
            return 0
        done = retry.requeue(conn, s, selection)
    finally:
        conn.close()
    print(f"re-queued {done} scene run(s); the next `cbm extract run`/`swarm` extracts them")
    return 0


@contextlib.contextmanager
def progress_bar(card: str, res: int):
    """A progress bar of one swarm run: scenes finished of the run's scenes, rows, rate, ETA."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task(f"{card} run {'SCL' if res == -1 else f'{res} m'}", total=None, detail="")

        def show(row: dict) -> None:
            eta = row.get("eta_seconds")
            detail = (f"left {row['left']}  failed {row['failed']}  rows {row['rows']:,}  "
                      f"{row['rate']:.0f} scenes/h" + (f"  ETA {eta / 60:.0f} min" if eta else ""))
            bar.update(task, total=row["scenes"], completed=row["done"] + row["failed"], detail=detail)

        yield show


def cmd_swarm(args) -> int:
    results = extraction.swarm(args.spec, args.card, args.res, args.all, args.replicas, args.aoi, args.parcels,
                               args.start, args.end, lease=args.lease, config=args.config,
                               out=lambda line: print(line, flush=True), follower=progress_bar)
    return 1 if any(r["failed"] for r in results) else 0


def register(sub):
    """Add the `cbm extract` group and its commands; returns the group's subparsers."""
    group = add_group(sub, "extract", "extract parcel statistics from the catalogued scenes")
    options.add_run_options(add_command(group, "run", cmd_run, options.RUN_HELP))
    prep = add_command(group, "prepare", cmd_prepare,
                       "rasterize the parcels for the grids (CRS, resolution) the catalogued scenes need")
    prep.add_argument("--card", action="append", choices=cards.CARDS,
                      help="only these cards (repeatable; default all)")
    prep.add_argument("--dry-run", action="store_true", help="list the grids, build nothing")
    options.add_filters(prep)
    again = add_command(group, "retry", cmd_retry,
                        "put scenes whose run ended with an error status back in the queue (counts first)")
    again.add_argument("--card", choices=cards.CARDS, help="only this card (default all)")
    again.add_argument("--status", action="append", metavar="STATUS",
                       help=f"only this error status (repeatable; default all: {', '.join(cards.FINAL_ERRORS)})")
    again.add_argument("--dry-run", action="store_true", help="only count, change nothing")
    swarm = add_command(group, "swarm", cmd_swarm,
                        "run the extraction as a swarm service on a deployment; it is removed when no scene is left")
    swarm.add_argument("spec", metavar="SPEC", help="the deployment's deployment.yml")
    swarm.add_argument("--card", required=True, choices=cards.CARDS)
    swarm.add_argument("--res", type=int, choices=(-1, 10, 20), help="s2: -1 = SCL histograms, 10 or 20 m bands")
    swarm.add_argument("--all", action="store_true", help="every run of the card in order (s2: -1, 10, 20)")
    swarm.add_argument("--replicas", type=int, help="worker tasks (default: one per worker, following `cbm up`)")
    swarm.add_argument("--lease", type=int, help="seconds a claim lives without heartbeat (default: extract.lease)")
    swarm.add_argument("--aoi", help="default: the onboarded AOI")
    swarm.add_argument("--parcels", metavar="TABLE", help="default: the onboarded parcel table")
    swarm.add_argument("--start", metavar="YYYY-MM-DD", help="default: the onboarded start")
    swarm.add_argument("--end", metavar="YYYY-MM-DD", help="exclusive; default: the day after the onboarded end")
    return group
