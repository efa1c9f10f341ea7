"""`cbm extract ...`: the worker (`run`) and the preparation of rasterized parcels (`prepare`).

`register(sub)` returns the group's subparsers so other areas can add commands to the same
group (e.g. `cbm extract swarm SPEC`): `group = extract_cli.register(sub); add_command(group, ...)`.
"""

from __future__ import annotations


from cbm.cli import add_command, add_group
from extractor.errors import UserError


def _settings(args):
    from extractor.cli import load_settings

    return load_settings(args)


def cmd_run(args) -> int:
    from extractor.extract import cards, worker

    if args.res is None:
        if args.card == "s2":
            raise UserError("--card s2 needs --res -1 (SCL histograms), 10 or 20")
        args.res = cards.RESOLUTIONS[args.card][0]
    s = _settings(args)
    worker.run(s, args.card, args.res, aoi=args.aoi, parcels=args.parcels, start=args.start, end=args.end,
               once=args.once, out=lambda line: print(line, flush=True))
    return 0


def cmd_prepare(args) -> int:
    from extractor import db
    from extractor.extract import prepare

    s = _settings(args)
    conn = db.connect(s)
    try:
        for line in prepare.prepare(conn, s, aoi=args.aoi, parcels=args.parcels, start=args.start, end=args.end,
                                    cards_wanted=args.card, dry_run=args.dry_run):
            print(line, flush=True)
    finally:
        conn.close()
    return 0


def _filters(p) -> None:
    p.add_argument("--aoi", help="AOI name in the aois table (default: extract.aoi)")
    p.add_argument("--parcels", metavar="TABLE", help="parcel table (default: extract.parcels)")
    p.add_argument("--start", metavar="YYYY-MM-DD", help="first observation date, inclusive (default: extract.start)")
    p.add_argument("--end", metavar="YYYY-MM-DD", help="last observation date, exclusive (default: extract.end)")


def register(sub):
    """Add the `cbm extract` group and its commands; returns the group's subparsers."""
    group = add_group(sub, "extract", "extract parcel statistics from the catalogued scenes")
    run = add_command(group, "run", cmd_run,
                      "a worker: extract scenes of one card/resolution until none is left, then exit 0")
    run.add_argument("--card", required=True, choices=("s2", "bs", "c6"))
    run.add_argument("--res", type=int, choices=(-1, 10, 20),
                     help="s2: -1 = SCL histograms, 10 or 20 m bands; bs: 10; c6: 20")
    run.add_argument("--once", action="store_true", help="process one scene and exit")
    _filters(run)
    prep = add_command(group, "prepare", cmd_prepare,
                       "rasterize the parcels for the grids (CRS, resolution) the catalogued scenes need")
    prep.add_argument("--card", action="append", choices=("s2", "bs", "c6"),
                      help="only these cards (repeatable; default all)")
    prep.add_argument("--dry-run", action="store_true", help="list the grids, build nothing")
    _filters(prep)
    return group
