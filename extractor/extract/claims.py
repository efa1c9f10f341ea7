"""Claims of scene runs: atomic, leased, counted; per-resolution run records; catalogue status.

One row in extraction_runs per (scene, run): res -1 (S2 SCL histograms), 10 or 20. A worker
claims the oldest scene of its card that intersects the AOI within the dates and whose run is
not taken (no row, 'ingested', or 'inprogress' with an expired lease = a dead worker):
  SELECT ... FOR UPDATE OF catalogue SKIP LOCKED LIMIT 1   (workers do not queue on each other)
  INSERT ... ON CONFLICT (obsid, res) DO UPDATE ... WHERE <still claimable>   (the real guard:
      two workers can never both get the row; the loser sees no row and tries the next scene)
The claim commits at once; the worker keeps its lease alive with a heartbeat (renew, from
guard.Guard), which also tells it when the run is not its own any more. Results and the run's
final status commit together (writer + finish): finish() only succeeds while the claim is still
ours, so a worker whose lease was taken over cannot write a second result.
A run claimed max_attempts times without finishing gets 'Max attempts' (sweep_exhausted); a scene
over extract.scene_timeout is given back with its attempt counted. A scene given back after a
storage fault does not use up an attempt (storage_faults counts those), nor one interrupted by a
lost database.

dias_catalogue.status keeps the seed's story for existing CbM tools (sync_catalogue):
'inprogress' while a run of the scene is claimed, 'ingested' while runs of its card remain,
'extracted' once every run of the card is done, 'No parcels' when the runs found no parcels
(for s2: when the SCL run found none, the later runs skip the scene), or the error status of
a failed run. Only scenes whose catalogue status is 'ingested' or 'inprogress' are claimed, so
scenes a seed tool marked otherwise are left alone.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from psycopg2 import sql

from extractor.db import table
from extractor.extract import cards
from extractor.extract.cards import EXTRACTED, FINAL_ERRORS, INGESTED, INPROGRESS, MAX_ATTEMPTS, NO_PARCELS

log = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Filters:
    aoi: str
    start: str | None
    end: str | None


@dataclass(frozen=True)
class Claim:
    obsid: int
    res: int
    card: str
    owner: str
    attempts: int
    reference: str
    product_path: str | None
    obstime: object
    epsg: int | None


class LeaseLost(Exception):
    """Our claim expired and another worker took the scene: our result must not be written."""


def _tables(settings):
    return {"cat": table(settings, "catalogue"), "runs": table(settings, "extraction_runs"),
            "aois": table(settings, "aois")}


def _candidate_sql(settings, spec: cards.RunSpec, lock: bool) -> sql.Composed:
    t = _tables(settings)
    skip = sql.SQL("")
    if spec.card == "s2" and spec.res != -1:  # the SCL run found no parcels: later runs skip the scene
        skip = sql.SQL(" AND NOT EXISTS (SELECT 1 FROM {runs} s WHERE s.obsid = c.id AND s.res = -1"
                       " AND s.status = %(np)s)").format(**t)
    return sql.SQL(
        "SELECT c.id FROM {cat} c LEFT JOIN {runs} r ON r.obsid = c.id AND r.res = %(res)s"
        " WHERE c.card = %(card)s AND c.status IN (%(ingested)s, %(inprogress)s)"
        " AND EXISTS (SELECT 1 FROM {aois} a WHERE a.name = %(aoi)s AND ST_Intersects(c.footprint, a.wkb_geometry))"
        " AND (%(start)s::timestamp IS NULL OR c.obstime >= %(start)s::timestamp)"
        " AND (%(end)s::timestamp IS NULL OR c.obstime < %(end)s::timestamp)"
        " AND (r.obsid IS NULL OR (r.attempts < %(max)s AND (r.status = %(ingested)s"
        "      OR (r.status = %(inprogress)s AND r.lease_until < now()))))"
        "{skip} ORDER BY c.obstime, c.id LIMIT 1{lock}"
    ).format(skip=skip, lock=sql.SQL(" FOR UPDATE OF c SKIP LOCKED") if lock else sql.SQL(""), **t)


def _params(settings, spec, filters: Filters, **extra) -> dict:
    return {"res": spec.res, "card": spec.card, "aoi": filters.aoi, "start": filters.start, "end": filters.end,
            "max": settings.extract.max_attempts, "ingested": INGESTED, "inprogress": INPROGRESS,
            "np": NO_PARCELS, **extra}


def claim(conn, settings, spec: cards.RunSpec, filters: Filters, owner: str) -> Claim | None:
    """Claim the next scene of this run, or None when no scene is claimable right now."""
    t = _tables(settings)
    for _ in range(50):  # lost races are retried on the next candidate
        with conn:
            with conn.cursor() as cur:
                cur.execute(_candidate_sql(settings, spec, lock=True), _params(settings, spec, filters))
                row = cur.fetchone()
                if row is None:
                    return None
                obsid = row[0]
                cur.execute(sql.SQL(
                    "INSERT INTO {runs} AS r (obsid, res, status, owner, claimed_at, lease_until, attempts)"
                    " VALUES (%(id)s, %(res)s, %(inprogress)s, %(owner)s, now(), now() + make_interval(secs => %(lease)s), 1)"
                    " ON CONFLICT (obsid, res) DO UPDATE SET status = EXCLUDED.status, owner = EXCLUDED.owner,"
                    "  claimed_at = EXCLUDED.claimed_at, lease_until = EXCLUDED.lease_until, attempts = r.attempts + 1"
                    " WHERE r.attempts < %(max)s AND (r.status = %(ingested)s"
                    "  OR (r.status = %(inprogress)s AND r.lease_until < now()))"
                    " RETURNING attempts").format(**t),
                    _params(settings, spec, filters, id=obsid, owner=owner, lease=float(settings.extract.lease)))
                got = cur.fetchone()
                if got is None:
                    continue  # another worker took it between our read and our write
                cur.execute(sql.SQL("UPDATE {cat} SET status = %s WHERE id = %s"
                                    " RETURNING reference, product_path, obstime, epsg").format(**t),
                            (INPROGRESS, obsid))
                ref, path, obstime, epsg = cur.fetchone()
                return Claim(obsid, spec.res, spec.card, owner, got[0], ref, path, obstime, epsg)
    return None


def live_leases(conn, settings, spec: cards.RunSpec) -> int:
    """Runs of this card and resolution other workers are processing now (unexpired leases)."""
    t = _tables(settings)
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {runs} r JOIN {cat} c ON c.id = r.obsid WHERE c.card = %s"
                                " AND r.res = %s AND r.status = %s AND r.lease_until >= now()").format(**t),
                        (spec.card, spec.res, INPROGRESS))
            return cur.fetchone()[0]


def sweep_exhausted(conn, settings, spec: cards.RunSpec) -> list[int]:
    """Runs claimed max_attempts times without finishing get 'Max attempts' (and the catalogue too)."""
    t = _tables(settings)
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "UPDATE {runs} r SET status = %(status)s, finished_at = now(), lease_until = NULL,"
                " detail = format('claimed %%s times without finishing (last owner %%s)', r.attempts, r.owner)"
                "   || coalesce(': ' || r.detail, '')"
                " FROM {cat} c WHERE c.id = r.obsid AND c.card = %(card)s AND r.res = %(res)s AND r.attempts >= %(max)s"
                " AND (r.status = %(ingested)s OR (r.status = %(inprogress)s AND r.lease_until < now()))"
                " RETURNING r.obsid").format(**t),
                {"status": MAX_ATTEMPTS, "card": spec.card, "res": spec.res, "max": settings.extract.max_attempts,
                 "ingested": INGESTED, "inprogress": INPROGRESS})
            ids = [r[0] for r in cur.fetchall()]
            for obsid in ids:
                sync_catalogue(cur, settings, obsid, spec.card)
    return ids


def finish(cur, settings, c: Claim, status: str, rows: int = 0, detail: str | None = None) -> None:
    """Record the run's end in the caller's transaction (with its rows); LeaseLost if not ours any more."""
    t = _tables(settings)
    cur.execute(sql.SQL("UPDATE {runs} SET status = %s, rows = %s, detail = %s, finished_at = now(), lease_until = NULL"
                        " WHERE obsid = %s AND res = %s AND owner = %s AND status = %s").format(**t),
                (status, rows, detail, c.obsid, c.res, c.owner, INPROGRESS))
    if cur.rowcount != 1:
        raise LeaseLost("the lease expired and another worker took the scene over")
    sync_catalogue(cur, settings, c.obsid, c.card)


def release(conn, settings, c: Claim, detail: str, storage_fault: bool = False, attempt: bool = True) -> None:
    """Give the scene back (a failure that may pass) if it is still ours: it is claimable again. Its
    attempt counts, except after a storage fault (counted in storage_faults instead: the storage
    failed, not the scene nor the worker; a long outage must not end in 'Max attempts') or with
    attempt=False (the worker lost the database)."""
    t = _tables(settings)
    counts = sql.SQL(", attempts = greatest(attempts - 1, 0)" if storage_fault or not attempt else "")
    if storage_fault:
        counts += sql.SQL(", storage_faults = storage_faults + 1")
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {runs} SET status = %s, lease_until = NULL, detail = %s{counts}"
                                " WHERE obsid = %s AND res = %s AND owner = %s AND status = %s").format(counts=counts, **t),
                        (INGESTED, detail, c.obsid, c.res, c.owner, INPROGRESS))
            sync_catalogue(cur, settings, c.obsid, c.card)


def catalogue_status(needed: tuple[int, ...], runs: dict[int, str]) -> str:
    """The dias_catalogue status told by the runs of a scene (see the module docstring)."""
    states = [runs.get(r, INGESTED) for r in needed]
    for s in states:
        if s in FINAL_ERRORS:
            return s
    if INPROGRESS in states:
        return INPROGRESS
    if -1 in needed and runs.get(-1) == NO_PARCELS:
        return NO_PARCELS
    if all(s in (EXTRACTED, NO_PARCELS) for s in states):
        return NO_PARCELS if all(s == NO_PARCELS for s in states) else EXTRACTED
    return INGESTED


def sync_catalogue(cur, settings, obsid: int, card: str) -> None:
    t = _tables(settings)
    cur.execute(sql.SQL("SELECT res, status FROM {runs} WHERE obsid = %s").format(**t), (obsid,))
    status = catalogue_status(cards.card_runs(settings, card), dict(cur.fetchall()))
    cur.execute(sql.SQL("UPDATE {cat} SET status = %s WHERE id = %s AND status IS DISTINCT FROM %s").format(**t),
                (status, obsid, status))


def renew(conn, settings, c: Claim, lease: float) -> str | None:
    """Extend our lease by `lease` seconds; None when done, else why the run is not ours any more."""
    t = _tables(settings)
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {runs} SET lease_until = now() + make_interval(secs => %s)"
                                " WHERE obsid = %s AND res = %s AND owner = %s AND status = %s").format(**t),
                        (lease, c.obsid, c.res, c.owner, INPROGRESS))
            if cur.rowcount == 1:
                return None
            cur.execute(sql.SQL("SELECT owner, status FROM {runs} WHERE obsid = %s AND res = %s").format(**t),
                        (c.obsid, c.res))
            row = cur.fetchone()
    owner, status = row if row else (None, None)
    if owner != c.owner:
        return f"the lease expired and worker {owner} took the scene over"
    return f"the lease expired and the run is '{status}' now"
