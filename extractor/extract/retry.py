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


def _selected(settings, selection: Selection) -> tuple[dict, dict]:
    """The tables and parameters of the selection's WHERE clause (runs r joined to catalogue c)."""
    tables = {"runs": table(settings, "extraction_runs"), "cat": table(settings, "catalogue")}
    return tables, {"statuses": list(selection.check().statuses), "card": selection.card}


WHERE = ("c.id = r.obsid AND r.status = ANY(%(statuses)s) AND (%(card)s::text IS NULL OR c.card = %(card)s)")


def count(conn, settings, selection: Selection) -> list[tuple[str, int, str, int]]:
    """(card, run, status, scenes) of the runs the selection would re-queue."""
    tables, params = _selected(settings, selection)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT c.card, r.res, r.status, count(*) FROM {runs} r, {cat} c WHERE " + WHERE
                            + " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3").format(**tables), params)
        return [(card.strip(), res, status, n) for card, res, status, n in cur.fetchall()]


def requeue(conn, settings, selection: Selection) -> int:
    """Put the selected runs back in the queue, in one transaction; the number of runs re-queued."""
    tables, params = _selected(settings, selection)
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "UPDATE {runs} r SET status = %(ingested)s, attempts = 0, lease_until = NULL, owner = NULL,"
                " finished_at = NULL, detail = 'retried: ' || coalesce(r.status || ': ' || r.detail, r.status)"
                " FROM {cat} c WHERE " + WHERE + " RETURNING r.obsid, c.card").format(**tables),
                {**params, "ingested": INGESTED})
            rows = cur.fetchall()
            for obsid, card in {(o, c.strip()) for o, c in rows}:
                claims.sync_catalogue(cur, settings, obsid, card)
    return len(rows)
