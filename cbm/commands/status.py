"""`cbm status [SPEC] [--png FILE]`: one look at a deployment, a table per topic (provision/ops/status.py
gathers the parts; this module draws them). `--png FILE`: cumulative scenes extracted over time per
card/run, and the status counts (matplotlib, Agg)."""

from __future__ import annotations

import datetime as dt
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cbm import context
from cbm.cli import add_command
from cbm.terminal import human_duration
from extractor.errors import UserError
from provision.ops import status as status_op
from provision.ops.backup import human_size
from provision.ops.status import Report

RUN_NAMES = {-1: "SCL hist", 10: "10 m", 20: "20 m"}
# Bar colours of the catalogue statuses in the plot (errors in reds, the rest by meaning).
STATUS_COLOURS = {"extracted": "tab:green", "ingested": "tab:gray", "inprogress": "tab:blue",
                  "No parcels": "tab:olive"}
ERROR_COLOURS = ("tab:red", "darkred", "salmon", "tab:pink", "tab:brown", "tab:purple")


def run_name(res: int) -> str:
    return RUN_NAMES.get(res, str(res))


class _Table(Table):
    """A rich table whose cells are data, never markup (a '[net]' in a cell stays as it is)."""

    def add_row(self, *cells, **kwargs):  # noqa: D102
        super().add_row(*(escape(str(c)) for c in cells), **kwargs)


def _table(title: str, columns: list[str], right: set[str] = frozenset()) -> Table:
    t = _Table(title=title, title_justify="left", title_style="bold", min_width=len(title) + 2)
    for c in columns:
        t.add_column(c, justify="right" if c in right else "left")
    return t


def render(report: Report, console: Console) -> None:
    console.print(f"[bold]cbm status: {report.title}[/bold]")
    if report.hosts is not None:
        t = _table("hosts", ["kind", "name", "role", "status", "addresses / detail"])
        for h in report.hosts:
            ok = h["status"] in ("ACTIVE", "in-use", "available")
            t.add_row(h["kind"], h["name"], h["role"], h["status"], h["detail"],
                      style=None if ok else "yellow")
        if not report.hosts:
            t.add_row("-", "nothing of this deployment in the cloud", "", "", "")
        console.print(t)
    if report.swarm is not None:
        t = _table("swarm nodes", ["hostname", "status", "availability", "manager", "engine"])
        for n in report.swarm:
            t.add_row(n.get("Hostname", "?"), n.get("Status", "?"), n.get("Availability", "?"),
                      n.get("ManagerStatus", "") or "-", n.get("EngineVersion", ""))
        console.print(t)
    if report.database is not None:
        d = report.database
        t = _table("database", ["where", "database", "server", "postgis", "size", "up for"], {"size"})
        t.add_row(d["where"], d["database"], d["server"], d["postgis"] or "not installed", human_size(d["size"]),
                  human_duration(d["uptime"].total_seconds() if d["uptime"] is not None else None))
        console.print(t)
    if report.catalog is not None:
        t = _table("catalog: scenes by card and status", ["card", "status", "count"], {"count"})
        for card, status, count in report.catalog:
            t.add_row(card, status, str(count))
        if not report.catalog:
            t.add_row("-", "no scenes (run cbm catalog sync)", "0")
        console.print(t)
    if report.progress:
        cols = ["card", "run", "scenes", "done", "failed", "running", "left", "rows", "scenes/h (last hour)", "ETA"]
        t = _table("extraction", cols, set(cols) - {"card", "run"})
        for p in report.progress:
            eta = "done" if not p["left"] else human_duration(p["eta_seconds"])
            t.add_row(p["card"], run_name(p["res"]), str(p["scenes"]), str(p["done"]), str(p["failed"]),
                      str(p["running"]), str(p["left"]), f"{p['rows']:,}", f"{p['rate']:.1f}", eta)
        console.print(t)
    if report.schedule:
        render_schedule(report.schedule, console)
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)


def _period(delta) -> str:
    """A period as `cbm schedule` takes it: 1d, 6h, 2w, 30m (0d for none)."""
    seconds = int(delta.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds:
            return f"{seconds // size}{unit}"
    return "0d" if not seconds else human_duration(seconds)


def render_schedule(part: dict, console: Console) -> None:
    """The continuous mode: its schedule and next run, the last run (a failed one in red, with its log)."""
    s, last = part["schedule"], part["last"]
    t = _table("continuous mode (cbm schedule)", ["", ""])
    t.show_header = False
    if s is None:
        t.add_row("schedule", "off")
    else:
        t.add_row("schedule", f"cards {', '.join(s.cards)} every {_period(s.every)}, lookback {_period(s.lookback)}; "
                              f"AOI {s.aoi}, parcels {s.parcels}")
        t.add_row("catalog synced to", str(s.synced_to))
        t.add_row("next run", "requested, starting now" if s.requested_at else f"{s.next_at:%Y-%m-%d %H:%M %Z}")
    if last is not None:
        took = (last["finished_at"] - last["started_at"]).total_seconds() if last["finished_at"] else None
        t.add_row("last run", f"#{last['id']} ({last['trigger']}) started {last['started_at']:%Y-%m-%d %H:%M %Z}"
                              + (f", took {human_duration(took)}" if took is not None else ", still running"))
        t.add_row("last outcome", f"{last['outcome']}{': ' + last['detail'] if last['detail'] else ''}",
                  style="red" if last["outcome"] in ("failed", "interrupted") else None)
        t.add_row("last counts", f"{last['products']} new product(s), {last['scenes']} scene run(s) extracted, "
                                 f"{last['failed']} failed")
        if last["log"]:
            t.add_row("last log (manager)", last["log"])
    console.print(t)


def write_png(report: Report, path) -> None:
    """Cumulative scenes extracted over time per card/run, and the scene counts by card and status."""
    import matplotlib  # lazy: heavy plotting library, only for --png

    matplotlib.use("Agg")
    import matplotlib.dates as mdates  # lazy: as above
    import matplotlib.pyplot as plt  # lazy: as above

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    fig.suptitle(f"cbm status: {report.title} ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)")

    series: dict[tuple[str, int], list] = {}
    for card, res, at in report.timeline or []:
        series.setdefault((card, res), []).append(at)
    for (card, res), times in sorted(series.items()):
        left.step(times, range(1, len(times) + 1), where="post", label=f"{card} {run_name(res)} ({len(times)})")
    left.set_title("scenes extracted (cumulative)")
    left.set_ylabel("scenes")
    left.set_xlabel("finished at (UTC)")
    left.grid(True, alpha=0.3)
    if series:
        left.legend(loc="upper left", fontsize="small")
        locator = mdates.AutoDateLocator()
        left.xaxis.set_major_locator(locator)
        left.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    else:
        left.text(0.5, 0.5, "no finished extraction runs yet", ha="center", va="center", transform=left.transAxes)

    counts = report.catalog or []
    cards = sorted({c for c, _, _ in counts})
    statuses = sorted({s for _, s, _ in counts})
    if counts:
        width = 0.8 / max(len(statuses), 1)
        lookup = {(c, s): n for c, s, n in counts}
        errors = iter(ERROR_COLOURS * 4)
        for i, status in enumerate(statuses):
            xs = [k + (i - (len(statuses) - 1) / 2) * width for k in range(len(cards))]
            ys = [lookup.get((c, status), 0) for c in cards]
            colour = STATUS_COLOURS.get(status) or next(errors)
            bars = right.bar(xs, ys, width=width, label=status, color=colour)
            right.bar_label(bars, labels=[str(y) if y else "" for y in ys], fontsize="x-small")
        right.set_xticks(range(len(cards)), cards)
        right.legend(fontsize="small")
    else:
        right.text(0.5, 0.5, "no scenes in the catalog", ha="center", va="center", transform=right.transAxes)
    right.set_title("catalog: scenes by card and status")
    right.set_ylabel("scenes")
    right.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise UserError(f"--png {path}: cannot write it ({exc.strerror}); choose another file") from None
    finally:
        plt.close(fig)


def cmd_status(args) -> int:
    report, ok = status_op.gather(context.deployment_of(args), args.config, with_timeline=bool(args.png))
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    render(report, console)
    if args.png:
        write_png(report, args.png)
        console.print(f"plot: {args.png}")
    return 0 if ok else 1


def register(sub) -> None:
    p = add_command(sub, "status", cmd_status,
                    help="hosts, swarm, PostGIS, catalog and extraction progress of a deployment, as tables")
    p.add_argument("spec", metavar="SPEC", nargs="?",
                   help="deployment spec (default: --deployment, $CBM_DEPLOYMENT, else only the database of the settings)")
    p.add_argument("--png", metavar="FILE", help="also write a plot: scenes extracted over time, status counts")
