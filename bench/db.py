"""Database growth benchmark: sigs and hists grown scene after scene as the extraction writes them, in
the seed's layout (plain tables, B-tree indexes on pid, obsid, band) and in ours (extractor/partitions.py:
partitioned by obsid range, one (pid, obsid) index), up to --rows sigs rows. Not part of CI.

The season: --parcels parcels (pid 1..N) on 8 S2 tiles (each parcel on one tile, 30% on a second), a
scene per tile every 5 days (SCL histograms, B02,B03,B04,B08 at 10 m, B05,B06,B07,B8A,B11,B12 at 20 m)
and 2 S1 orbits (60% of the parcels each, VV/VH) every 6 days. Week after week: the catalogue gets the
week's scenes (and, ours, its partitions, as `cbm catalog sync` makes them), then every scene is written
as a worker does (writer.copy_hists / copy_sigs, binary COPY, the run's row and status in the same
transaction), SCL first, then 10 m, 20 m and S1. Clouds: a third of the scenes mostly clouded, a third
clear; a clouded parcel's histogram holds class 9 only.

At each checkpoint (10^6, 10^7, 3*10^7, 10^8 sigs rows, up to --rows):
  copy      sigs rows/s of the last scenes (COPY + commit, the server's work)
  bytes     bytes per sigs row: table + indexes
  warm/cold one parcel's season (its sigs joined to the catalogue, all bands, and its SCL histograms):
            median over 5 parcels, warm; cold = after a restart of the server and dropping the OS cache
  delete    the maintenance delete of clouded observations (seed: its one DELETE; ours: cbm maintain
            clouded's count + batches), in a transaction rolled back, so the growth goes on untouched
  status    the progress queries of `cbm status` (extractor/progress.py)
  also      checkpoints and autovacuum/autoanalyze runs so far, and the machine's 1-minute load, so a
            slow figure can be told from a busy machine
The server has a deployment's settings, durable (fsync and full-page writes on, unlike the tests'
throwaway server) and tuned as roles/postgis tunes a manager with this machine's memory.
One layout at a time (the disk holds one), dropped after; results go to bench/out/db/results.json, so
`--layouts seed` and `--layouts ours` can run separately; the table and bench/out/db/db.png compare both.

Usage: python -m bench db [--rows 1e8] [--parcels 120000] [--layouts seed,ours]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import psycopg2
import yaml

from extractor import maintain, partitions, progress, schema
from extractor import settings as settings_mod
from extractor.extract import writer
from sandbox.localdb import SEED_SIGS_HISTS, LocalPostgis

LONG = "about an hour for both layouts up to 10^8 rows"   # python -m bench runs it only when named
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "db"
CHECKPOINTS = (1_000_000, 10_000_000, 30_000_000, 100_000_000, 300_000_000, 1_000_000_000)
TILES, ORBITS = 8, 2
S2_10, S2_20, S1 = ("B02", "B03", "B04", "B08"), ("B05", "B06", "B07", "B8A", "B11", "B12"), ("VVb", "VHb")
SEED_DELETE = ("DELETE FROM sigs s USING hists h WHERE s.pid = h.pid AND s.obsid = h.obsid"
               " AND (SELECT count(*) FROM json_object_keys(h.hist)) = 1 AND h.hist::jsonb ? '9'")
SEASON = """
SELECT c.obstime, c.card, s.band, s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75
  FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid WHERE s.pid = %(pid)s ORDER BY c.obstime, s.band;
SELECT c.obstime, h.hist FROM hists h JOIN dias_catalogue c ON c.id = h.obsid WHERE h.pid = %(pid)s
 ORDER BY c.obstime
"""


def log(msg: str) -> None:
    print(msg, flush=True)


def deployment_settings(memory_mb: int, wal_cap_mb: int | None = None) -> dict[str, str]:
    """The server settings roles/postgis gives a manager of memory_mb (its defaults, the same shares)."""
    d = yaml.safe_load((ROOT / "roles" / "postgis" / "defaults" / "main.yml").read_text())
    wal = min(d["postgis_max_wal_size_mb"], wal_cap_mb or d["postgis_max_wal_size_mb"])
    return {"shared_buffers": f"{int(memory_mb * d['postgis_shared_buffers_share'])}MB",
            "effective_cache_size": f"{int(memory_mb * d['postgis_effective_cache_share'])}MB",
            "max_wal_size": f"{wal}MB", **{k: str(v) for k, v in d["postgis_tuning"].items()},
            **d["postgis_settings"]}


class DeploymentPostgis(LocalPostgis):
    """The throwaway server with a deployment's settings (roles/postgis: durable, tuned for this machine's
    memory)."""

    def __init__(self):
        super().__init__()
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.settings = deployment_settings(memory_mb)
        self.server_options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())


class Season:
    """Which parcels each scene covers, and the per-scene cloud share."""

    def __init__(self, parcels: int, seed: int = 7):
        self.rng = np.random.default_rng(seed)
        pids = np.arange(1, parcels + 1, dtype=np.int32)
        first = self.rng.integers(0, TILES, parcels)
        second = np.where(self.rng.random(parcels) < 0.3, (first + 1) % TILES, -1)
        self.tiles = [np.sort(pids[(first == t) | (second == t)]) for t in range(TILES)]
        self.orbits = [np.sort(pids[self.rng.random(parcels) < 0.6]) for _ in range(ORBITS)]
        both = np.intersect1d(np.intersect1d(pids[second >= 0], self.orbits[0]), self.orbits[1])
        self.probes = [int(p) for p in self.rng.choice(both, 5, replace=False)]

    def week(self, w: int) -> list[tuple[str, int, dt.datetime]]:
        """(card, tile or orbit, time) of the week's scenes, S2 first then S1, by date: a catalog sync."""
        start = dt.datetime(2024, 3, 1) + dt.timedelta(days=7 * w)
        days = [start + dt.timedelta(days=d) for d in range(7)]
        s2 = [("s2", t, day + dt.timedelta(hours=10, minutes=t)) for day in days for t in range(TILES)
              if ((day - dt.datetime(2024, 3, 1)).days + t) % 5 == 0]
        s1 = [("bs", o, day + dt.timedelta(hours=17, minutes=o)) for day in days for o in range(ORBITS)
              if ((day - dt.datetime(2024, 3, 1)).days + 3 * o) % 6 == 0]
        return s2 + s1


def band_stats(rng, n: int) -> np.ndarray:
    mean = rng.uniform(200, 4000, n).astype(np.float32)
    std = rng.uniform(10, 400, n).astype(np.float32)
    count = rng.integers(5, 400, n).astype(np.float32)
    return np.stack([count, mean, std, mean - 2 * std, mean + 2 * std, mean - std / 2, mean, mean + std / 2], 1)


def scl_counts(rng, n: int, cloudy: float) -> np.ndarray:
    counts = np.zeros((n, 12), np.int64)
    pixels = rng.integers(5, 400, n)
    clouded = rng.random(n) < cloudy
    counts[clouded, 9] = pixels[clouded]
    clear = ~clouded
    counts[clear, 4] = pixels[clear] * 3 // 4
    counts[clear, 5] = pixels[clear] - counts[clear, 4]
    some = clear & (rng.random(n) < 0.3)
    counts[some, 8] = 3
    return counts


class Grower:
    def __init__(self, conn, settings, season: Season):
        self.conn, self.settings, self.season = conn, settings, season
        self.rng = np.random.default_rng(11)
        self.sigs_rows = self.hists_rows = 0
        self.scenes: list[tuple[int, float]] = []   # (sigs rows, seconds) of each sigs scene
        self.week_no = 0

    def _write(self, obsid: int, res: int, fn) -> int:
        with self.conn.cursor() as cur:
            rows = fn(cur)
            cur.execute("INSERT INTO extraction_runs (obsid, res, status, owner, claimed_at, finished_at, rows,"
                        " attempts) VALUES (%s, %s, 'extracted', 'bench', now(), now(), %s, 1)", (obsid, res, rows))
            cur.execute("UPDATE dias_catalogue SET status = 'extracted' WHERE id = %s", (obsid,))
        self.conn.commit()
        return rows

    def week(self, ours: bool):
        """Sync the week's scenes into the catalogue, then write them; yields after each scene."""
        scenes = self.season.week(self.week_no)
        ids = []
        with self.conn.cursor() as cur:
            for card, where, when in scenes:
                cur.execute("INSERT INTO dias_catalogue (obstime, reference, sensor, card) VALUES (%s, %s, %s, %s)"
                            " RETURNING id", (when, f"{card}_{where}_{when:%Y%m%dT%H%M}", "2A" if card == "s2" else "1A",
                                              card))
                ids.append(cur.fetchone()[0])
            if ours:
                partitions.ensure_partitions(cur, self.settings)
        self.conn.commit()
        s, rng = self.settings, self.rng
        s2 = [(i, self.season.tiles[w], rng.choice([0.9, 0.4, 0.02])) for i, (c, w, _) in zip(ids, scenes) if c == "s2"]
        s1 = [(i, self.season.orbits[w]) for i, (c, w, _) in zip(ids, scenes) if c == "bs"]
        for obsid, pids, cloudy in s2:
            counts = scl_counts(rng, len(pids), cloudy)
            self.hists_rows += self._write(obsid, -1, lambda cur: writer.copy_hists(cur, s, obsid, pids, counts))
        self.week_no += 1
        for res, codes in ((10, S2_10), (20, S2_20)):
            for obsid, pids, _ in s2:
                self._sigs(obsid, res, pids, codes)
                yield
        for obsid, pids in s1:
            self._sigs(obsid, 10, pids, S1)
            yield

    def _sigs(self, obsid: int, res: int, pids: np.ndarray, codes) -> None:
        bands = [(c, band_stats(self.rng, len(pids))) for c in codes]
        t0 = time.perf_counter()
        rows = self._write(obsid, res, lambda cur: writer.copy_sigs(cur, self.settings, obsid, pids, bands))
        self.scenes.append((rows, time.perf_counter() - t0))
        self.sigs_rows += rows

    def copy_rate(self, last_rows: int) -> float:
        rows = secs = 0.0
        for n, t in reversed(self.scenes):
            rows, secs = rows + n, secs + t
            if rows >= last_rows:
                break
        return rows / secs


# -- measurements ------------------------------------------------------------------------------
def total_bytes(cur, name: str) -> int:
    cur.execute("SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%s::regclass)),"
                " pg_total_relation_size(%s::regclass))", (name, name))
    return int(cur.fetchone()[0])


def season_query(conn, pid: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = 0
    with conn.cursor() as cur:
        for stmt in SEASON.split(";"):
            cur.execute(stmt, {"pid": pid})
            rows += len(cur.fetchall())
    conn.rollback()
    return (time.perf_counter() - t0) * 1000, rows


def cold(pg: LocalPostgis, connect, pid: int) -> float | None:
    pg._pg("pg_ctl", "-D", str(pg.data), "-m", "fast", "-w", "stop")
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        dropped = True
    except OSError:
        dropped = False
    pg.start()
    conn = connect()
    try:
        ms, _ = season_query(conn, pid)
    finally:
        conn.close()
    return ms if dropped else None


def measure(pg, connect, grower: Grower, ours: bool) -> dict:
    conn, s = grower.conn, grower.settings
    with conn.cursor() as cur:  # what autovacuum does sooner or later; the same for both layouts
        cur.execute("ANALYZE sigs; ANALYZE hists")
    conn.commit()
    row = {"rows": grower.sigs_rows, "hists_rows": grower.hists_rows,
           "copy_rows_s": grower.copy_rate(min(3_000_000, grower.sigs_rows // 3))}
    with conn.cursor() as cur:
        row["bytes_per_row"] = total_bytes(cur, "sigs") / grower.sigs_rows
        row["hists_bytes"] = total_bytes(cur, "hists")
        cur.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'sigs'::regclass")
        row["partitions"] = cur.fetchone()[0]
        # what else ran during the growth so far: the server's background work and the machine's load
        cur.execute("SELECT checkpoints_timed + checkpoints_req, (SELECT sum(autovacuum_count + autoanalyze_count)"
                    " FROM pg_stat_user_tables) FROM pg_stat_bgwriter")
        row["checkpoints"], row["autovacuums"] = (int(v or 0) for v in cur.fetchone())
    row["load1"] = os.getloadavg()[0]
    conn.commit()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        progress.extraction_progress(conn, s)
        progress.extraction_timeline(conn, s)
        conn.rollback()
        times.append(time.perf_counter() - t0)
    row["status_s"] = min(times)
    probes = grower.season.probes
    for pid in probes:
        season_query(conn, pid)
    warm = [season_query(conn, pid) for pid in probes]
    row["warm_ms"] = statistics.median(ms for ms, _ in warm)
    row["season_rows"] = statistics.median(n for _, n in warm)
    conn.close()
    colds = [cold(pg, connect, pid) for pid in probes[:3]]
    row["cold_ms"] = statistics.median(colds) if None not in colds else None
    conn = grower.conn = connect()
    t0 = time.perf_counter()
    if ours:
        classes = maintain.DEFAULT_CLASSES
        batches = maintain.clouded_plan(conn, s, classes)
        deleted = maintain.delete_clouded(_Uncommitted(conn), s, classes, batches)
    else:
        with conn.cursor() as cur:
            cur.execute(SEED_DELETE)
            deleted = cur.rowcount
    row["delete_s"] = time.perf_counter() - t0
    row["deleted"] = deleted
    conn.rollback()
    return row


class _Uncommitted:
    """A connection whose commits are ignored: the batches of the delete are rolled back at the end."""

    def __init__(self, conn):
        self._conn = conn

    def cursor(self):
        return self._conn.cursor()

    def commit(self):
        pass


def run_layout(layout: str, target: int, parcels: int) -> list[dict]:
    ours = layout == "ours"
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    with DeploymentPostgis() as pg:
        os.environ.update(pg.env())
        s = settings_mod.load(environ={})

        def connect():
            return psycopg2.connect(host="127.0.0.1", port=pg.port, user=pg.user, dbname="postgres",
                                    passfile=str(pg.passfile))

        conn = connect()
        with conn.cursor() as cur:
            cur.execute("SHOW shared_buffers")
            log(f"[{layout}] server: PostgreSQL {conn.server_version // 10000}, fsync on, "
                + (", ".join(f"{k} {v}" for k, v in pg.settings.items()) or "PostgreSQL's defaults")
                + f"; root {pg.root}")
            if not ours:
                cur.execute("CREATE EXTENSION IF NOT EXISTS postgis")
                cur.execute(SEED_SIGS_HISTS)
        conn.commit()
        schema.init_schema(conn, s)
        conn.commit()
        grower = Grower(conn, s, Season(parcels))
        marks = [c for c in CHECKPOINTS if c < target] + [target]
        t_start = time.perf_counter()
        scenes = (None for _ in iter(int, 1) for _ in grower.week(ours))
        for mark in marks:
            while grower.sigs_rows < mark:
                next(scenes)
            log(f"[{layout}] {grower.sigs_rows:,} sigs rows, {grower.hists_rows:,} hists rows after "
                f"{grower.week_no} weeks ({time.perf_counter() - t_start:.0f} s); measuring ...")
            row = measure(pg, connect, grower, ours)
            row["elapsed_s"] = time.perf_counter() - t_start
            results.append(row)
            log(f"[{layout}]   " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                             for k, v in row.items()))
            save(layout, results)
        grower.conn.close()
    return results


def save(layout: str, results: list[dict]) -> None:
    path = OUT / "results.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[layout] = results
    path.write_text(json.dumps(data, indent=1))


FIELDS = (("copy_rows_s", "COPY rows/s", "{:,.0f}"), ("bytes_per_row", "bytes/row", "{:.1f}"),
          ("warm_ms", "season warm ms", "{:.1f}"), ("cold_ms", "season cold ms", "{:.1f}"),
          ("delete_s", "clouded delete s", "{:.1f}"), ("status_s", "status s", "{:.3f}"))


def report(data: dict) -> None:
    seed, ours = data.get("seed", []), data.get("ours", [])
    by_rows = {}
    for layout, rows in (("seed", seed), ("ours", ours)):
        for r in rows:
            by_rows.setdefault(r["rows"] // 1_000_000, {})[layout] = r
    log(f"{'sigs rows':>10}  {'measure':<17}{'seed':>12}{'ours':>12}{'ours/seed':>10}")
    for mrows in sorted(by_rows):
        pair = by_rows[mrows]
        for key, label, fmt in FIELDS:
            a, b = (pair.get(x, {}).get(key) for x in ("seed", "ours"))
            cells = [fmt.format(v) if v is not None else "-" for v in (a, b)]
            ratio = f"{b / a:.2f}" if a and b else "-"
            log(f"{mrows:>9}M  {label:<17}{cells[0]:>12}{cells[1]:>12}{ratio:>10}")
    for layout, rows in (("seed", seed), ("ours", ours)):
        if rows:
            log(f"{layout}: COPY rows/s at {rows[-1]['rows']:,} rows = {rows[-1]['copy_rows_s'] / rows[0]['copy_rows_s']:.0%}"
                f" of the rate at {rows[0]['rows']:,}; partitions {rows[-1]['partitions']}; "
                f"parcel season {rows[-1]['season_rows']:.0f} rows; run {rows[-1]['elapsed_s'] / 60:.0f} min")
    plot(data)


def plot(data: dict) -> None:
    import matplotlib  # lazy: only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, label, _) in zip(axes.flat, FIELDS):
        for layout, style in (("seed", "o--"), ("ours", "s-")):
            pts = [(r["rows"], r[key]) for r in data.get(layout, []) if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=layout)
        ax.set_xscale("log")
        ax.set_xlabel("sigs rows")
        ax.set_title(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("sigs/hists as they grow: the seed's layout vs ours (partitioned by obsid, (pid, obsid) index)")
    fig.tight_layout()
    fig.savefig(OUT / "db.png", dpi=90)
    log(f"curves: {OUT / 'db.png'}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench db")
    ap.add_argument("--rows", type=float, default=1e8, help="sigs rows to grow to (default 1e8)")
    ap.add_argument("--parcels", type=int, default=120_000)
    ap.add_argument("--layouts", default="seed,ours", help="seed, ours or both (default), one after the other")
    ap.add_argument("--report", action="store_true", help="only print the table and draw the PNG of the last runs")
    args = ap.parse_args(argv)
    if not args.report:
        for layout in args.layouts.split(","):
            if layout not in ("seed", "ours"):
                raise SystemExit(f"--layouts: unknown layout '{layout}'; use seed, ours or seed,ours")
            t0 = time.perf_counter()
            run_layout(layout, int(args.rows), args.parcels)
            log(f"[{layout}] done in {(time.perf_counter() - t0) / 60:.0f} min")
    path = OUT / "results.json"
    if path.exists():
        report(json.loads(path.read_text()))
    return 0
