"""The options of a worker run, defined once for `cbm extract run` and for the worker's entry point
(`python -m extractor.extract run`, see __main__.py), and the run itself."""

from __future__ import annotations

import argparse

from extractor.errors import UserError
from extractor.extract import cards

RUN_HELP = "a worker: extract scenes of one card/resolution until none is left, then exit 0"


def add_filters(parser: argparse.ArgumentParser) -> None:
    """--aoi, --parcels, --start, --end: which parcels and scenes (`run` and `prepare`)."""
    parser.add_argument("--aoi", help="AOI name in the aois table (default: extract.aoi)")
    parser.add_argument("--parcels", metavar="TABLE", help="parcel table (default: extract.parcels)")
    parser.add_argument("--start", metavar="YYYY-MM-DD",
                        help="first observation date, inclusive (default: extract.start)")
    parser.add_argument("--end", metavar="YYYY-MM-DD", help="last observation date, exclusive (default: extract.end)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--card", required=True, choices=cards.CARDS)
    parser.add_argument("--res", type=int, choices=(-1, 10, 20),
                        help="s2: -1 = SCL histograms, 10 or 20 m bands; bs: 10; c6: 20")
    parser.add_argument("--once", action="store_true", help="process one scene and exit")
    add_filters(parser)


def resolution(args) -> int:
    """The run of --card: --res, or the card's only one (bs, c6); s2 needs --res."""
    if args.res is not None:
        return args.res
    if args.card == "s2":
        raise UserError("--card s2 needs --res -1 (SCL histograms), 10 or 20")
    return cards.RESOLUTIONS[args.card][0]


def run(args, settings_of, out) -> int:
    """Run a worker with the parsed options; `settings_of(args)` gives the settings (read after the
    options are checked), `out` takes the progress lines. Returns the exit code, 0."""
    from extractor.extract import worker  # lazy: numba, rasterio and shapely load only when a worker runs

    res = resolution(args)
    worker.run(settings_of(args), args.card, res, aoi=args.aoi, parcels=args.parcels, start=args.start,
               end=args.end, once=args.once, out=out)
    return 0
