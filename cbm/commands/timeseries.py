"""`cbm timeseries PARCEL_TABLE PID [PID ...] [--card s2|bs|c6] [--from DATE] [--to DATE]
[--clear-threshold F] [--csv FILE] [--png FILE]`: the observations of one or a few parcels
(extractor/timeseries.py: the query, NDVI, dB, clear or cloudy), written as a CSV and/or a chart.

The CSV has a header and one row per parcel, observation and band: the sigs rows as stored (raw DN
for S2, linear gamma0 / coherence for S1), then the derived bands NDVI (S2) and <band>_db (CARD-BS).
No observation in the window is not an error: a note on stderr, a CSV with its header only, a chart
saying so, exit 0.
The PNG has one panel per quantity present (NDVI; S2 reflectances; S1 backscatter in dB; S1
coherence), dates on x, one colour per parcel and band; cloudy S2 observations are crosses off the line.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys

from cbm import context
from cbm.cli import add_command
from extractor import db
from extractor import timeseries as ts
from extractor.errors import UserError

DPI = 100
WIDTH_IN = 12.0          # inches: the PNG is WIDTH_IN * DPI pixels wide
PANEL_IN = 3.0           # inches per panel: the PNG is panels * PANEL_IN * DPI pixels high


# -- CSV -----------------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def write_csv(rows: list[ts.Row], path: str) -> None:
    try:
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(ts.COLUMNS)
            for row in rows:
                out.writerow([_cell(getattr(row, c)) for c in ts.COLUMNS])
    except OSError as exc:
        raise UserError(f"--csv {path}: cannot write it ({exc.strerror}); choose another file") from None


# -- PNG -----------------------------------------------------------------------------------------
def panels(rows: list[ts.Row]) -> list[tuple[str, str, list[ts.Row], bool]]:
    """(title, y label, rows, as reflectance) of each panel with data, in a fixed order."""
    s2 = [r for r in rows if r.card == "s2"]
    found = [
        ("NDVI of the band means (S2)", "NDVI", [r for r in s2 if r.band == "NDVI"], False),
        ("S2 band means as reflectance, (DN + BOA offset) / 10000", "reflectance",
         [r for r in s2 if not r.derived], True),
        ("S1 backscatter CARD-BS, 10 log10(mean gamma0)", "dB",
         [r for r in rows if r.card == "bs" and r.derived], False),
        ("S1 coherence CARD-COH6 (mean)", "coherence", [r for r in rows if r.card == "c6"], False),
    ]
    return [p for p in found if p[2]]


def png_size(rows: list[ts.Row]) -> tuple[int, int]:
    """The PNG's size in pixels (width, height): one panel per quantity, at least one."""
    return round(WIDTH_IN * DPI), round(max(len(panels(rows)), 1) * PANEL_IN * DPI)


def write_png(rows: list[ts.Row], path: str, title: str, threshold: float) -> None:
    import matplotlib  # lazy: matplotlib only for --png

    matplotlib.use("Agg")
    import matplotlib.dates as mdates  # lazy: matplotlib only for --png
    import matplotlib.pyplot as plt  # lazy: matplotlib only for --png

    found = panels(rows)
    width, height = png_size(rows)
    fig, axes = plt.subplots(max(len(found), 1), 1, figsize=(width / DPI, height / DPI), dpi=DPI,
                             sharex=True, squeeze=False)
    axes = [a[0] for a in axes]
    fig.suptitle(title, fontsize="medium")
    if not found:
        axes[0].text(0.5, 0.5, "no observations of these parcels in this window", ha="center", va="center",
                     transform=axes[0].transAxes)
        axes[0].set_yticks([])
    colours = plt.get_cmap("tab10").colors
    for ax, (name, ylabel, data, as_reflectance) in zip(axes, found):
        lines: dict[tuple[int, str], list[ts.Row]] = {}
        for r in data:
            lines.setdefault((r.pid, r.band), []).append(r)
        cloudy_shown = False
        for i, ((pid, band), series) in enumerate(sorted(lines.items())):
            colour = colours[i % len(colours)]
            value = (lambda r: ts.reflectance(r.mean, r.offset)) if as_reflectance else (lambda r: r.mean)
            clear = [(r.obstime, value(r)) for r in series if r.clear is not False and value(r) is not None]
            cloudy = [(r.obstime, value(r)) for r in series if r.clear is False and value(r) is not None]
            if clear:
                ax.plot(*zip(*clear), marker="o", markersize=3.5, linewidth=1.2, color=colour,
                        label=f"{pid} {band}")
            if cloudy:
                ax.plot(*zip(*cloudy), linestyle="none", marker="x", markersize=5, color=colour, alpha=0.6,
                        label=None if clear else f"{pid} {band}")
                cloudy_shown = True
        if cloudy_shown:
            ax.plot([], [], linestyle="none", marker="x", color="black", label=f"cloudy (clear share < {threshold:g})")
        ax.set_title(name, fontsize="small", loc="left")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="x-small", ncol=1 + len(lines) // 12)
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[-1].set_xlabel("observation time (UTC)")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=DPI)
    except OSError as exc:
        raise UserError(f"--png {path}: cannot write it ({exc.strerror}); choose another file") from None
    finally:
        plt.close(fig)


# -- the command ---------------------------------------------------------------------------------
def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"date {text!r} is not YYYY-MM-DD; fix --from/--to") from None


def cmd_timeseries(args) -> int:
    if not args.csv and not args.png:
        raise UserError("timeseries: give --csv FILE and/or --png FILE (where to write the series)")
    cards = (args.card,) if args.card else ts.CARDS
    start = _date(args.start) if args.start else None
    end = _date(args.end) if args.end else None
    settings = context.settings(args)
    with db.session(settings) as conn:
        rows = ts.series(conn, settings, args.parcels, args.pids, cards, start, end, args.clear_threshold)
    pids = ", ".join(map(str, dict.fromkeys(args.pids)))
    window = f"{start or 'first'} to {end or 'last'}"
    if not rows:
        print(f"timeseries: no {'/'.join(cards)} observations of parcel {pids} in {args.parcels} from {window}",
              file=sys.stderr)
    if args.csv:
        write_csv(rows, args.csv)
        observations = len({(r.pid, r.reference) for r in rows})
        print(f"csv: {args.csv} ({len(rows)} rows: {observations} observations of parcel {pids})")
    if args.png:
        where = getattr(settings, "deployment", None)
        title = f"parcel {pids} of {args.parcels}{f' ({where})' if where else ''}, {window}"
        write_png(rows, args.png, title, args.clear_threshold)
        print(f"plot: {args.png}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "timeseries", cmd_timeseries,
                    help="the observations of one or a few parcels (sigs with the catalogue): band statistics, "
                         "NDVI, S1 dB, clear or cloudy; as a CSV and/or a chart")
    p.add_argument("parcels", metavar="PARCEL_TABLE", help="the parcel table the extraction used (pid = ogc_fid)")
    p.add_argument("pids", metavar="PID", type=int, nargs="+", help="parcel ids (ogc_fid)")
    p.add_argument("--card", choices=ts.CARDS, help="only this card (default: all)")
    p.add_argument("--from", dest="start", metavar="DATE", help="first day, YYYY-MM-DD (inclusive)")
    p.add_argument("--to", dest="end", metavar="DATE", help="last day, YYYY-MM-DD (inclusive)")
    p.add_argument("--clear-threshold", metavar="F", type=float, default=ts.DEFAULT_CLEAR_THRESHOLD,
                   help="an S2 observation is clear when this share of the parcel's SCL pixels is vegetation, "
                        f"bare soil or water (classes 4, 5, 6; default {ts.DEFAULT_CLEAR_THRESHOLD})")
    p.add_argument("--csv", metavar="FILE", help="write the series as CSV (one row per parcel, observation, band)")
    p.add_argument("--png", metavar="FILE", help="write a chart (dates on x; cloudy observations as crosses)")
