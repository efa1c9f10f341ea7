"""Scenes whose run ended with an error status, back in the queue (`cbm extract retry`).

The seed fixed these with hand-written SQL. A run in one of the error statuses ('No band file',
'Rio error', 'Parcel SQL', 'Max attempts') becomes 'ingested' again with its attempts reset, its
error text kept after "retried: " in its detail; the scene's catalogue status follows
(claims.sync_catalogue). Count first (`count`), then `requeue` the same selection in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2 import sql

from extractor.db import table
from extractor.errors import UserError
from extractor.extract import cards, claims
from extractor.extract.cards import FINAL_ERRORS, INGESTED


@dataclass(frozen=True)
class Selection:
    card: str | None = None                 # None: every card
    statuses: tuple[str, ...] = FINAL_ERRORS

    def check(self) -> "Selection":
        if self.card is not None and self.card not in cards.CARDS:
            raise UserError(f"--card {self.card}: unknown card; use one of {', '.join(cards.CARDS)}")
        wrong = [s for s in self.statuses if s not in FINAL_ERRORS]
        if wrong:
            raise UserError(f"--status {wrong[0]!r} is not an error status; use one of "
                            f"{', '.join(repr(s) for s in FINAL_ERRORS)}")
        return self


def _where(settings, selection: Selection) -> tuple[sql.Composed, dict]:
    query = sql.SQL("FROM {runs} r JOIN {cat} c ON c.id = r.obsid WHERE r.status = ANY(%(statuses)s)"
                    " AND (%(card)s::text IS NULL OR c.card = %(card)s)").format(
        runs=table(settings, "extraction_runs"), cat=table(settings, "catalogue"))
    return query, {"statuses": list(selection.statuses), "card": selection.card}


def count(conn, settings, selection: Selection) -> list[tuple[str, int, str, int]]:
    """(card, run, status, scenes) of the runs the selection would re-queue."""
    where, params = _where(settings, selection.check())
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT c.card, r.res, r.status, count(*) {} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3")
                    .format(where), params)
        return [(card.strip(), res, status, n) for card, res, status, n in cur.fetchall()]


def requeue(conn, settings, selection: Selection) -> int:
    """Put the selected runs back in the queue, in one transaction; the number of runs re-queued."""
    where, params = _where(settings, selection.check())
    runs = table(settings, "extraction_runs")
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "UPDATE {runs} u SET status = %(ingested)s, attempts = 0, lease_until = NULL, owner = NULL,"
                " finished_at = NULL, detail = 'retried: ' || coalesce(u.status || ': ' || u.detail, u.status)"
                " WHERE (u.obsid, u.res) IN (SELECT r.obsid, r.res {where}) RETURNING u.obsid, "
                " (SELECT card FROM {cat} WHERE id = u.obsid)").format(
                    runs=runs, where=where, cat=table(settings, "catalogue")),
                {**params, "ingested": INGESTED})
            rows = cur.fetchall()
            for obsid, card in {(o, c.strip()) for o, c in rows}:
                claims.sync_catalogue(cur, settings, obsid, card)
    return len(rows)
