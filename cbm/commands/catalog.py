"""`cbm catalog sync|summary|status`: the catalog of CDSE scenes (extractor/catalog.py)."""

from __future__ import annotations

import datetime as dt

from cbm import context
from cbm.cli import add_command, add_group
from extractor import catalog, db

SUMMARY_HEADER = ["card", "sensor", "count", "first", "last"]


def print_table(title: str, header: list[str], rows: list[tuple]) -> None:
    from rich.console import Console  # lazy: rich (~0.05 s) only when a table is printed
    from rich.table import Table  # lazy: as above

    t = Table(title=title, title_justify="left")
    for h in header:
        t.add_column(h, justify="right" if h in ("count",) else "left")
    def cell(v) -> str:
        if v is None:
            return ""
        return v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, dt.datetime) else str(v)

    for r in rows:
        t.add_row(*(cell(v) for v in r))
    Console(width=120).print(t)


def cmd_sync(args) -> int:
    settings = context.settings(args)
    catalog.check_request(args.card, args.ptype, args.start, args.end)
    stats = catalog.sync(settings, args.aoi, args.start, args.end, args.card, args.ptype)
    print(f"catalog: {stats.received} products received in {stats.pages} page(s)"
          f"{f', {stats.splits} window split(s)' if stats.splits else ''}; "
          f"{stats.inserted} new, {stats.known} already known, {stats.replaced} replaced by a better baseline, "
          f"{stats.lower_baseline} skipped as duplicate baselines, {stats.no_geometry} skipped without footprint")
    _print_summary(settings, args.aoi)
    return 0


def cmd_summary(args) -> int:
    _print_summary(context.settings(args), args.aoi)
    return 0


def _print_summary(settings, aoi: str) -> None:
    print_table(f"catalog for AOI {aoi}", SUMMARY_HEADER, catalog.aoi_summary(settings, aoi))


def cmd_status(args) -> int:
    settings = context.settings(args)
    with db.session(settings) as conn:
        rows = catalog.status_counts(conn, settings)
    print_table("scenes by card and status", ["card", "status", "count"], rows)
    return 0


def register(sub) -> None:
    group = add_group(sub, "catalog", "the catalog of CDSE scenes (dias_catalogue)")
    p = add_command(group, "sync", cmd_sync, "copy the CDSE catalog entries over an AOI into dias_catalogue")
    p.add_argument("aoi", metavar="AOI", help="name of the AOI in the aois table")
    p.add_argument("start", metavar="START", help="first day, YYYY-MM-DD")
    p.add_argument("end", metavar="END", help="last day (included), YYYY-MM-DD")
    p.add_argument("card", metavar="CARD", help="s2 | bs | c6 | c12")
    p.add_argument("ptype", metavar="PTYPE", nargs="?",
                   help="product type: S2MSI2A (default) or S2MSI1C for s2; CARD-BS, CARD-COH6, CARD-COH12 for S1")
    p = add_command(group, "summary", cmd_summary, "the scenes over an AOI: card, sensor, count, first, last")
    p.add_argument("aoi", metavar="AOI")
    add_command(group, "status", cmd_status, "scene counts by card and status")
