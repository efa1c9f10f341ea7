"""Extraction progress, read from the database: what `cbm status` shows and `cbm extract swarm` follows.

Per card and run (resolution), from the catalogue and extraction_runs: scenes, done, failed, running
(a live lease), left, rows written, scenes per hour over the last hour and the ETA.
"""

from __future__ import annotations

from psycopg2 import sql

from extractor.db import table, table_exists
from extractor.extract import cards
from extractor.extract.cards import EXTRACTED, FINAL_ERRORS, INGESTED, INPROGRESS, NO_PARCELS

EMPTY = {"scenes": 0, "done": 0, "failed": 0, "running": 0, "left": 0, "rows": 0, "rate": 0.0, "eta_seconds": None}


def _runs_table(conn, settings) -> sql.Composed | None:
    return table(settings, "extraction_runs") if table_exists(conn, settings, "extraction_runs") else None


def wanted_runs(conn, settings) -> list[tuple[str, int]]:
    """(card, run) pairs of the cards present in the catalogue."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT DISTINCT card FROM {}").format(table(settings, "catalogue")))
        present = sorted(r[0].strip() for r in cur.fetchall())
    return [(card, res) for card in present if card in cards.CARDS for res in cards.card_runs(settings, card)]


def extraction_progress(conn, settings) -> list[dict]:
    """Per card and run: scenes, done (extracted or no parcels), failed, running (live lease), left
    (claimable or running), rows, scenes finished in the last hour, the rate per hour and the ETA."""
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
    runs = _runs_table(conn, settings)
    if runs is None:
        return []
    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "SELECT c.card, r.res, r.finished_at FROM {runs} r JOIN {cat} c ON c.id = r.obsid"
            " WHERE r.status IN (%s, %s) AND r.finished_at IS NOT NULL ORDER BY r.finished_at"
        ).format(runs=runs, cat=table(settings, "catalogue")), (EXTRACTED, NO_PARCELS))
        return [(card.strip(), res, at) for card, res, at in cur.fetchall()]


def run_progress(conn, settings, card: str, res: int) -> dict:
    """The progress row of one run (zeros when the catalogue has no scene of the card)."""
    for row in extraction_progress(conn, settings):
        if row["card"] == card and row["res"] == res:
            return row
    return dict(EMPTY)
