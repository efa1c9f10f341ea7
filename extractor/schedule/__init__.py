"""Continuous mode: a job on the deployment syncs the catalog and extracts the new scenes, periodically.

`cbm schedule SPEC --cards s2,bs,c6 --every 1d [--lookback 10d]` writes the schedule (the one row of
table `schedule`) and runs the job on the manager as a swarm service (roles/schedule):
`python -m extractor.schedule loop` in the extractor image. The loop sleeps until the next run is due
or one is asked for (`cbm schedule SPEC --run-now`: requested_at, NOTIFY cbm_schedule), runs it
(extractor/schedule/job.py) and records it in `schedule_runs`. `cbm status SPEC` shows the last run and
the next one (status_of).

    schedule       id = 1: cards, every, lookback, aoi, parcels, start (the extraction's first obstime),
                   synced_to (the last day of the last sync), next_at, requested_at
    schedule_runs  id, trigger (timer | request), started_at, finished_at, outcome (running | ok | failed |
                   interrupted | skipped), synced_from, synced_to, products (new in the catalog), scenes
                   (scene runs extracted), failed (scene runs ended with an error status), log (its path
                   on the manager), detail (why it failed or was skipped)
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from psycopg2 import sql

from extractor.db import table, table_exists
from extractor.errors import UserError
from extractor.extract import cards as extract_cards

CHANNEL = "cbm_schedule"          # NOTIFY channel: the loop wakes up at once for a requested run
LOCK_KEY = 0x63626D5F73636864     # pg advisory lock held during a run: runs never overlap
SCHEDULE, RUNS = "schedule", "schedule_runs"
DURATION = re.compile(r"^(\d+)([mhdw])$")
UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str, what: str, minimum: int = 60) -> dt.timedelta:
    """'30m', '6h', '1d', '2w' -> timedelta; a one-line UserError naming the option otherwise."""
    m = DURATION.match((text or "").strip())
    if not m or int(m.group(1)) * UNITS[m.group(2)] < minimum:
        least = f" of at least {minimum // 60} min" if minimum else ""
        raise UserError(f"{what} {text!r} is not a duration{least}: use a whole number and m, h, d or w, "
                        "e.g. 1d or 6h")
    return dt.timedelta(seconds=int(m.group(1)) * UNITS[m.group(2)])


def ordered_cards(text: str) -> list[str]:
    """'c6,s2' -> ['s2', 'c6']: the seed's order (S2 first, its SCL run before the bands, then bs, c6)."""
    wanted = [c.strip() for c in (text or "").split(",") if c.strip()]
    unknown = [c for c in wanted if c not in extract_cards.CARDS]
    if not wanted or unknown:
        raise UserError(f"--cards {text!r}: use a comma-separated list of {', '.join(extract_cards.CARDS)}")
    return [c for c in extract_cards.CARDS if c in wanted]


@dataclass(frozen=True)
class Schedule:
    cards: list[str]
    every: dt.timedelta
    lookback: dt.timedelta
    aoi: str
    parcels: str
    start: dt.date | None
    synced_to: dt.date
    next_at: dt.datetime | None = None
    requested_at: dt.datetime | None = None


def create_tables(cur, settings) -> None:
    """The schedule and its runs (called by extractor/schema.py init_schema)."""
    cur.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1), cards text[] NOT NULL,"
        " every interval NOT NULL, lookback interval NOT NULL, aoi text NOT NULL, parcels text NOT NULL, start date,"
        " synced_to date NOT NULL, next_at timestamptz NOT NULL, requested_at timestamptz,"
        " updated_at timestamptz NOT NULL DEFAULT now())").format(table(settings, SCHEDULE)))
    cur.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (id serial PRIMARY KEY, trigger text NOT NULL,"
        " started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz,"
        " outcome varchar(12) NOT NULL DEFAULT 'running', synced_from date, synced_to date,"
        " products integer NOT NULL DEFAULT 0, scenes integer NOT NULL DEFAULT 0, failed integer NOT NULL DEFAULT 0,"
        " log text, detail text)").format(table(settings, RUNS)))


def _tables_exist(conn, settings) -> bool:
    return table_exists(conn, settings, SCHEDULE) and table_exists(conn, settings, RUNS)


def write(conn, settings, s: Schedule) -> None:
    """Set the schedule; its next run is one period from now. A schedule that exists keeps its synced_to
    (the next run syncs from there)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "INSERT INTO {} (id, cards, every, lookback, aoi, parcels, start, synced_to, next_at)"
            " VALUES (1, %s, %s, %s, %s, %s, %s, %s, now() + %s) ON CONFLICT (id) DO UPDATE SET cards = EXCLUDED.cards,"
            " every = EXCLUDED.every, lookback = EXCLUDED.lookback, aoi = EXCLUDED.aoi, parcels = EXCLUDED.parcels,"
            " start = EXCLUDED.start, next_at = EXCLUDED.next_at, updated_at = now()").format(table(settings, SCHEDULE)),
            (s.cards, s.every, s.lookback, s.aoi, s.parcels, s.start, s.synced_to, s.every))


def remove(conn, settings) -> bool:
    """Delete the schedule (its runs stay, as history); whether there was one."""
    if not _tables_exist(conn, settings):
        return False
    with conn.cursor() as cur:
        cur.execute(sql.SQL("DELETE FROM {}").format(table(settings, SCHEDULE)))
        return cur.rowcount > 0


def read(conn, settings) -> Schedule | None:
    if not _tables_exist(conn, settings):
        return None
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT cards, every, lookback, aoi, parcels, start, synced_to, next_at, requested_at"
                            " FROM {}").format(table(settings, SCHEDULE)))
        row = cur.fetchone()
    return Schedule(*row) if row else None


def request_run(conn, settings) -> dt.datetime:
    """Ask the job for a run now (the loop is woken by NOTIFY); the time of the request."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET requested_at = now() RETURNING requested_at").format(
            table(settings, SCHEDULE)))
        row = cur.fetchone()
        if row is None:
            raise UserError("no schedule on this deployment; set one with cbm schedule SPEC --cards ... --every ...")
        cur.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(CHANNEL)))
        return row[0]


RUN_COLUMNS = ("id", "trigger", "started_at", "finished_at", "outcome", "synced_from", "synced_to", "products",
               "scenes", "failed", "log", "detail")


def runs(conn, settings, since: dt.datetime | None = None, limit: int = 20) -> list[dict]:
    """The latest runs, newest first (those started at or after `since` only, when given)."""
    if not _tables_exist(conn, settings):
        return []
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT {} FROM {} WHERE %s::timestamptz IS NULL OR started_at >= %s"
                            " ORDER BY id DESC LIMIT %s").format(
            sql.SQL(", ").join(map(sql.Identifier, RUN_COLUMNS)), table(settings, RUNS)), (since, since, limit))
        return [dict(zip(RUN_COLUMNS, row)) for row in cur.fetchall()]


def status_of(conn, settings) -> dict | None:
    """For `cbm status`: the schedule and its last run (None when there never was a schedule)."""
    s = read(conn, settings)
    last = runs(conn, settings, limit=1)
    if s is None and not last:
        return None
    return {"schedule": s, "last": last[0] if last else None}


def get_run(conn, settings, run_id: int) -> dict | None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
            sql.SQL(", ").join(map(sql.Identifier, RUN_COLUMNS)), table(settings, RUNS)), (run_id,))
        row = cur.fetchone()
    return dict(zip(RUN_COLUMNS, row)) if row else None


def take_due(conn, settings) -> tuple[str | None, float | None]:
    """The run to start now, taken off the schedule: 'request' (requested_at cleared) or 'timer' (next_at
    moved to the first slot after now); None and the seconds until the next run otherwise (None, None:
    no schedule)."""
    if not _tables_exist(conn, settings):
        return None, None
    t = table(settings, SCHEDULE)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET requested_at = NULL WHERE requested_at IS NOT NULL RETURNING 1").format(t))
        if cur.fetchone():
            return "request", None
        cur.execute(sql.SQL(
            "UPDATE {} SET next_at = next_at + every * (floor(extract(epoch FROM now() - next_at)"
            " / extract(epoch FROM every)) + 1) WHERE next_at <= now() RETURNING 1").format(t))
        if cur.fetchone():
            return "timer", None
        cur.execute(sql.SQL("SELECT extract(epoch FROM next_at - now()) FROM {}").format(t))
        row = cur.fetchone()
    return None, (float(row[0]) if row else None)
