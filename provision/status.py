"""`cbm status [SPEC] [--png FILE]`: one look at a deployment, a table per topic.

    hosts        the deployment's servers, volume and floating IP, from the cloud (openstacksdk; SPEC only)
    swarm        `docker node ls` on the manager over SSH (fabric; SPEC only; skipped with a note if unreachable)
    database     PostGIS up, versions, size
    catalog      scenes by card and status (the seed's query, extractor.catalog.status_counts)
    extraction   per card and run (resolution): done / failed / running / left, rows, scenes per hour over the
                 last hour, ETA (from extraction_runs)

Without SPEC only the database of the normal settings is reported. A part that cannot be reached is a
note under the tables and makes the exit code 1; 0 means every part answered.
`--png FILE`: cumulative scenes extracted over time per card/run, and the status counts (matplotlib, Agg).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass, field

from psycopg2 import sql
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from extractor.errors import CbmError, UserError
from extractor.backup import human_size

RUN_NAMES = {-1: "SCL hist", 10: "10 m", 20: "20 m"}
# Bar colours of the catalogue statuses in the plot (errors in reds, the rest by meaning).
STATUS_COLOURS = {"extracted": "tab:green", "ingested": "tab:gray", "inprogress": "tab:blue",
                  "No parcels": "tab:olive"}
ERROR_COLOURS = ("tab:red", "darkred", "salmon", "tab:pink", "tab:brown", "tab:purple")


# -- gathering --------------------------------------------------------------------------------
@dataclass
class Report:
    title: str
    hosts: list[dict] | None = None
    swarm: list[dict] | None = None
    database: dict | None = None
    catalog: list[tuple] | None = None
    progress: list[dict] | None = None
    timeline: list[tuple] | None = None
    notes: list[str] = field(default_factory=list)


def cloud_hosts(spec) -> list[dict]:
    """Servers, the volume and floating IPs of the deployment (provision.owner.find: by ownership tags)."""
    from provision import cloud, owner

    conn = cloud.connect(spec)
    try:
        found = owner.find(conn, spec)
    finally:
        conn.close()
    rows = []
    for server in found.servers():
        meta = server.metadata or {}
        per_net = []
        for net, addrs in sorted((server.addresses or {}).items()):
            shown = [f"{a.get('addr')}{' (floating)' if a.get('OS-EXT-IPS:type') == 'floating' else ''}"
                     for a in addrs or []]
            per_net.append(f"{net}: {', '.join(shown)}")
        rows.append({"kind": "server", "name": server.name, "role": meta.get("cbm-role", "?"),
                     "status": server.status, "detail": "; ".join(per_net)})
    for vol in found.volumes:
        attached = ", ".join(a.get("server_id", "")[:8] + ":" + str(a.get("device", ""))
                             for a in (vol.attachments or []))
        rows.append({"kind": "volume", "name": vol.name, "role": "data", "status": vol.status,
                     "detail": f"{vol.size} GB{', attached ' + attached if attached else ''}"})
    for ip in found.floating_ips:
        rows.append({"kind": "floating IP", "name": ip.floating_ip_address, "role": "manager",
                     "status": ip.status, "detail": f"fixed {ip.fixed_ip_address or '-'}"})
    return rows


SWARM_COMMAND = "docker node ls --format '{{json .}}'"


def swarm_nodes(dep, timeout: float = 10) -> list[dict]:
    """`docker node ls` on the manager (with sudo when the SSH user is not in the docker group)."""
    from provision.deployment import manager_ssh

    conn = manager_ssh(dep, timeout)
    try:
        result = conn.run(f"{SWARM_COMMAND} 2>/dev/null || sudo -n {SWARM_COMMAND}", hide=True, warn=True,
                          timeout=timeout * 3, in_stream=False)
    finally:
        conn.close()
    if not result.ok:
        reason = " ".join((result.stderr or result.stdout or f"exit {result.exited}").split())[:200]
        raise CbmError(f"docker node ls on {dep.manager_host} failed: {reason} "
                       f"(is the swarm set up? cbm configure {dep.spec.where})")
    nodes = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            nodes.append(json.loads(line))
    return nodes


def database_facts(conn) -> dict:
    with conn.cursor() as cur:
        cur.execute("SELECT current_database(), current_setting('server_version'),"
                    " (SELECT extversion FROM pg_extension WHERE extname = 'postgis'),"
                    " pg_database_size(current_database()), now() - pg_postmaster_start_time()")
        name, version, postgis, size, uptime = cur.fetchone()
    return {"database": name, "server": version, "postgis": postgis, "size": size, "uptime": uptime}


def _runs_table(conn, settings) -> sql.Composed | None:
    from extractor.db import table, table_exists

    return table(settings, "extraction_runs") if table_exists(conn, settings, "extraction_runs") else None


def wanted_runs(conn, settings) -> list[tuple[str, int]]:
    """(card, run) pairs of the cards present in the catalogue."""
    from extractor.db import table
    from extractor.extract import cards

    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT card FROM {}").format(table(settings, "catalogue")))
        present = sorted(r[0].strip() for r in cur.fetchall())
    return [(card, res) for card in present if card in cards.CARDS for res in cards.card_runs(settings, card)]


def extraction_progress(conn, settings) -> list[dict]:
    """Per card and run: scenes, done (extracted or no parcels), failed, running (live lease), left
    (claimable or running), rows, scenes finished in the last hour, the rate per hour and the ETA."""
    from extractor.db import table
    from extractor.extract.cards import EXTRACTED, FINAL_ERRORS, INGESTED, INPROGRESS, NO_PARCELS

    runs = _runs_table(conn, settings)
    want = wanted_runs(conn, settings)
    if runs is None or not want:
        return []
    values = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(c), sql.Literal(r)) for c, r in want)
    query = sql.SQL(
        "WITH want(card, res) AS (VALUES {values}),"
        " s AS (SELECT w.card, w.res, c.status AS cstatus, r.status AS rstatus, r.rows, r.claimed_at,"
        "   r.finished_at, r.lease_until,"
        "   (w.card = 's2' AND w.res <> -1 AND EXISTS (SELECT 1 FROM {runs} x WHERE x.obsid = c.id AND x.res = -1"
        "     AND x.status = %(np)s)) AS skipped"
        "   FROM want w JOIN {cat} c ON c.card = w.card LEFT JOIN {runs} r ON r.obsid = c.id AND r.res = w.res)"
        " SELECT card, res, count(*),"
        "  count(*) FILTER (WHERE rstatus = ANY(%(done)s)),"
        "  count(*) FILTER (WHERE rstatus = ANY(%(failed)s)),"
        "  count(*) FILTER (WHERE rstatus = %(inprogress)s AND lease_until > now()),"
        "  count(*) FILTER (WHERE cstatus IN (%(ingested)s, %(inprogress)s) AND NOT skipped"
        "                   AND (rstatus IS NULL OR rstatus IN (%(ingested)s, %(inprogress)s))),"
        "  coalesce(sum(rows) FILTER (WHERE rstatus = ANY(%(done)s)), 0),"
        "  count(*) FILTER (WHERE rstatus = ANY(%(done)s) AND finished_at > now() - interval '1 hour'),"
        "  extract(epoch FROM now() - greatest(now() - interval '1 hour',"
        "    min(claimed_at) FILTER (WHERE rstatus = ANY(%(done)s) AND finished_at > now() - interval '1 hour')))"
        " FROM s GROUP BY card, res ORDER BY card, res"
    ).format(values=values, runs=runs, cat=table(settings, "catalogue"))
    with conn.cursor() as cur:
        cur.execute(query, {"np": NO_PARCELS, "done": [EXTRACTED, NO_PARCELS], "failed": list(FINAL_ERRORS),
                            "inprogress": INPROGRESS, "ingested": INGESTED})
        rows = cur.fetchall()
    out = []
    for card, res, total, done, failed, running, left, nrows, last_hour, window in rows:
        rate = last_hour * 3600.0 / float(window) if last_hour and window and window > 0 else 0.0
        eta = left / rate * 3600.0 if rate > 0 and left else None
        out.append({"card": card, "res": res, "scenes": total, "done": done, "failed": failed, "running": running,
                    "left": left, "rows": int(nrows), "last_hour": last_hour, "rate": rate, "eta_seconds": eta})
    return out


def extraction_timeline(conn, settings) -> list[tuple]:
    """(card, run, finished_at) of every finished run (extracted or no parcels), oldest first."""
    from extractor.db import table
    from extractor.extract.cards import EXTRACTED, NO_PARCELS

    runs = _runs_table(conn, settings)
    if runs is None:
        return []
    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "SELECT c.card, r.res, r.finished_at FROM {runs} r JOIN {cat} c ON c.id = r.obsid"
            " WHERE r.status IN (%s, %s) AND r.finished_at IS NOT NULL ORDER BY r.finished_at"
        ).format(runs=runs, cat=table(settings, "catalogue")), (EXTRACTED, NO_PARCELS))
        return [(card.strip(), res, at) for card, res, at in cur.fetchall()]


def database_part(report: Report, settings, with_timeline: bool) -> None:
    from extractor import catalog, db

    conn = db.connect(settings)  # one-line CbmError when down
    try:
        report.database = database_facts(conn)
        report.database["where"] = db.describe(settings)
        if db.table_exists(conn, settings, settings.tables.catalogue):
            report.catalog = [(c.strip(), s, n) for c, s, n in catalog.status_counts(conn, settings)]
            report.progress = extraction_progress(conn, settings)
            if with_timeline:
                report.timeline = extraction_timeline(conn, settings)
        else:
            report.notes.append(f"catalog: no table {settings.tables.catalogue} in {db.describe(settings)}; "
                                "run cbm db init")
    finally:
        conn.close()


def gather(spec_path: str | None, config: str | None, with_timeline: bool = False) -> tuple[Report, bool]:
    """The report and whether every part answered."""
    ok = True
    if not spec_path:
        from extractor import settings as settings_mod

        report = Report(title="database of the settings")
        database_part(report, settings_mod.load(config), with_timeline)  # the only part: errors propagate
        return report, ok

    from provision import deployment
    from provision import spec as specs

    spec = specs.load(spec_path)
    report = Report(title=f"deployment {spec.name}")
    try:
        report.hosts = cloud_hosts(spec)
    except UserError:
        raise  # a bad spec or clouds.yaml: the user must fix it
    except CbmError as exc:
        report.notes.append(f"hosts: {exc}")
        ok = False
    try:
        dep = deployment.load(spec_path)
    except UserError as exc:
        report.notes.append(f"swarm and database: {exc}")
        return report, False
    try:
        report.swarm = swarm_nodes(dep)
    except CbmError as exc:  # SSH worked, docker did not answer
        report.notes.append(f"swarm: {exc}")
        ok = False
    except Exception as exc:  # noqa: BLE001 - any SSH failure is a note, never a traceback
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        report.notes.append(f"swarm: skipped, the manager {dep.manager_host} is unreachable over SSH ({reason})")
        ok = False
    try:
        database_part(report, deployment.deployment_settings(spec_path, config), with_timeline)
    except CbmError as exc:
        report.notes.append(f"database: {exc}")
        ok = False
    return report, ok


# -- rendering --------------------------------------------------------------------------------
def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


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
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {escape(note)}", soft_wrap=True)


def write_png(report: Report, path) -> None:
    """Cumulative scenes extracted over time per card/run, and the scene counts by card and status."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

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
    from provision.deployment import spec_of

    report, ok = gather(spec_of(args), getattr(args, "config", None), with_timeline=bool(args.png))
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    render(report, console)
    if args.png:
        write_png(report, args.png)
        console.print(f"plot: {args.png}")
    return 0 if ok else 1


def register(sub) -> None:
    from cbm.cli import add_command

    p = add_command(sub, "status", cmd_status,
                    help="hosts, swarm, PostGIS, catalog and extraction progress of a deployment, as tables")
    p.add_argument("spec", metavar="SPEC", nargs="?",
                   help="deployment spec (default: --deployment, $CBM_DEPLOYMENT, else only the database of the settings)")
    p.add_argument("--png", metavar="FILE", help="also write a plot: scenes extracted over time, status counts")
