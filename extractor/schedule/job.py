"""One run of the continuous mode, never two at once:

  1. the catalog sync of every card of the schedule over its AOI, from the last synced day minus the
     lookback (products published late) to today (extractor/catalog.py: known products are skipped);
  2. the extraction of the scenes left to do, card by card in the seed's order (s2: SCL histograms,
     then 10 m, then 20 m; then bs, c6), by a worker in this process (extractor/extract/worker.py)
     over the AOI's parcels from the schedule's start;
  3. its record in schedule_runs: outcome, counts, the path of its log.

A PostgreSQL advisory lock (LOCK_KEY), held by a connection of its own for the whole run, keeps runs
apart: a run that finds it taken (a request during a timer run, a second job) is recorded as skipped
and does nothing. A run whose process ended without recording its end (killed, its host went down)
is marked interrupted by the next one.
"""

from __future__ import annotations

import datetime as dt
import traceback
from pathlib import Path

from psycopg2 import sql

from extractor import catalog, db
from extractor.db import table
from extractor.errors import CbmError, UserError, one_line
from extractor.extract import cards, claims, worker
from extractor.schedule import LOCK_KEY, RUNS, get_run, read

DONE = (cards.EXTRACTED, cards.NO_PARCELS)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _record(settings, run_id: int, **values) -> None:
    columns = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in values)
    with db.session(settings) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET {} WHERE id = %s").format(table(settings, RUNS), columns),
                    (*values.values(), run_id))


def _insert(conn, settings, trigger: str, **values) -> tuple[int, dt.datetime]:
    values = {"trigger": trigger, **values}
    with conn.cursor() as cur:
        cur.execute(sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id, started_at").format(
            table(settings, RUNS), sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values))), tuple(values.values()))
        return cur.fetchone()


def _row(settings, run_id: int) -> dict:
    with db.session(settings) as conn:
        return get_run(conn, settings, run_id)


def run(settings, trigger: str, log_dir: str | Path, out=print) -> dict:
    """One run (`trigger`: timer or request); its schedule_runs row."""
    lock = db.connect(settings)
    lock.autocommit = True
    try:
        with lock.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            free = cur.fetchone()[0]
        if not free:
            with db.session(settings) as conn:
                run_id, _ = _insert(conn, settings, trigger, outcome="skipped", finished_at=_utc_now(),
                                    detail="another run was in progress (it holds the schedule's lock)")
            out("skipped: another run is in progress")
            return _row(settings, run_id)
        with db.session(settings) as conn:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("UPDATE {} SET outcome = 'interrupted', detail = 'the job ended during the run'"
                                    " WHERE outcome = 'running'").format(table(settings, RUNS)))
            plan = read(conn, settings)
            if plan is None:
                raise UserError("no schedule in this database; set one with cbm schedule SPEC --cards ... --every ...")
            run_id, started = _insert(conn, settings, trigger)
        log = Path(log_dir) / f"run-{run_id:06d}.log"
        try:
            f = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed below, after the run's record
        except OSError as exc:
            _record(settings, run_id, outcome="failed", finished_at=_utc_now(),
                    detail=f"cannot write the run's log {log}: {exc.strerror}")
            out(f"run {run_id}: failed, cannot write its log {log} ({exc.strerror})")
            return _row(settings, run_id)
        _record(settings, run_id, log=str(log))
        with f:
            def say(line: str) -> None:
                f.write(f"{_utc_now():%Y-%m-%dT%H:%M:%SZ} {line}\n")
                f.flush()
                out(line)

            outcome, detail = "failed", None
            try:
                say(f"run {run_id} ({trigger}): cards {', '.join(plan.cards)}, AOI {plan.aoi}, parcels {plan.parcels}")
                _cycle(settings, plan, run_id, say)
                outcome = "ok"
            except KeyboardInterrupt:
                outcome, detail = "interrupted", "the job was stopped during the run"
                raise
            except CbmError as exc:
                detail = one_line(exc)
            except Exception as exc:  # noqa: BLE001 - a bug: recorded, its traceback in the log
                detail = f"{type(exc).__name__}: {one_line(exc)}"
                f.write(traceback.format_exc())
            finally:
                done, failed = _counts(settings, started)
                say(f"run {run_id}: {outcome}{': ' + detail if detail else ''}; {done} scene run(s) extracted, "
                    f"{failed} failed")
                _record(settings, run_id, outcome=outcome, detail=detail, scenes=done, failed=failed,
                        finished_at=_utc_now())
        return _row(settings, run_id)
    finally:
        lock.close()


def _cycle(settings, plan, run_id: int, say) -> None:
    today = _utc_now().date()
    since = plan.synced_to - plan.lookback
    products = 0
    for card in plan.cards:
        stats = catalog.sync(settings, plan.aoi, since.isoformat(), today.isoformat(), card)
        products += stats.inserted + stats.replaced
        say(f"catalog {card} {since} .. {today}: {stats.received} received, {stats.inserted} new, "
            f"{stats.replaced} replaced (better baseline), {stats.known} known")
    _record(settings, run_id, synced_from=since, synced_to=today, products=products)
    with db.session(settings) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {} SET synced_to = %s").format(table(settings, "schedule")), (today,))
    start = plan.start.isoformat() if plan.start else None
    for card in plan.cards:
        for res in cards.card_runs(settings, card):
            worker.run(settings, card, res, aoi=plan.aoi, parcels=plan.parcels, start=start, end=None, out=say)


def _counts(settings, started: dt.datetime) -> tuple[int, int]:
    """Scene runs this process finished since `started`: (done, ended with an error status)."""
    try:
        with db.session(settings) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FILTER (WHERE status = ANY(%s)), count(*) FILTER (WHERE status = ANY(%s))"
                                " FROM {} WHERE owner = %s AND finished_at >= %s").format(table(settings, "extraction_runs")),
                        (list(DONE), list(cards.FINAL_ERRORS), claims.worker_id(), started))
            return cur.fetchone()
    except CbmError:
        return 0, 0
