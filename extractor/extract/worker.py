"""The extraction worker: claim a scene run, read the window under its parcels, compute, write.

Loop (`cbm extract run`): check that the storage answers (else exit with one line, nothing
claimed), sweep runs that ran out of attempts, claim the oldest claimable scene, process it,
repeat; when nothing is claimable, wait while other workers still hold live leases (one of them
may die and its scene must be taken back), then exit 0. A scene runs under a guard.Guard: its
lease is renewed, and the scene is dropped unwritten when the lease is not ours any more
(LeaseLost) or given back when it takes longer than extract.scene_timeout (SceneTimeout; a storage
call that does not return by then ends the worker, SceneStuck). When the storage stops answering
during a scene, the scene is given back (storage.StorageFault) and the worker waits for the storage
with a backoff (extract.backoff, doubled up to 120 s) for at most extract.outage_wait seconds. When
it loses the database (PostGIS restarting), the scene in progress is not written; the worker
reconnects with the same backoff and bound and gives that scene back (its attempt not counted).
On SIGTERM (the swarm drains the node or removes the service; python as a container's PID 1 would
ignore it without a handler) the scene in progress stops at its next step, is given back at once
without using an attempt (nothing written), and the worker exits 0 (guard.StopRequest).
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import time
from dataclasses import dataclass, field

import numpy as np
import psycopg2
from psycopg2 import sql
from rasterio.windows import Window

from extractor.errors import CbmError, UserError, one_line
from extractor import db
from extractor.db import table
from extractor.extract import cards, claims, guard, kernels, rasterize, sources, storage, writer
from extractor.extract.cards import EXTRACTED, NO_PARCELS, SceneError

log = logging.getLogger(__name__)
MAX_BACKOFF = 120.0
SCENE_MEMO = 4  # scene extents whose parcel runs a worker keeps (tiles come back on the next date)


@dataclass
class Context:
    settings: object
    spec: cards.RunSpec
    filters: claims.Filters
    source: rasterize.ParcelSource
    aoi_pids: np.ndarray
    owner: str = field(default_factory=claims.worker_id)
    cache: rasterize.GridCache = field(default_factory=rasterize.GridCache)
    scene_memo: dict = field(default_factory=dict)
    done: int = 0   # scenes processed
    current: claims.Claim | None = None   # the scene being processed (given back after a lost database)
    stop: guard.StopRequest = field(default_factory=guard.StopRequest)   # set by SIGTERM


@dataclass
class SceneResult:
    status: str
    rows: int = 0
    parcels: int = 0
    detail: str | None = None
    seconds: dict = field(default_factory=dict)
    fetched: int | None = None   # bytes fetched from S3 for the scene


def check_filters(conn, settings, aoi: str | None, start: str | None, end: str | None) -> claims.Filters:
    if not aoi:
        raise UserError("no AOI given; pass --aoi NAME or set extract.aoi (see cbm aoi add)")
    for name, value in (("--start", start), ("--end", end)):
        if value:
            try:
                dt.date.fromisoformat(str(value))
            except ValueError:
                raise UserError(f"{name} {value!r} is not a date; use YYYY-MM-DD") from None
    if start and end and str(start) >= str(end):
        raise UserError(f"--start {start} is not before --end {end}; swap or fix the dates")
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE name = %s").format(table(settings, "aois")), (aoi,))
            if cur.fetchone()[0] == 0:
                raise UserError(f"AOI '{aoi}' is not in table {settings.tables.aois}; add it with cbm aoi add {aoi} ...")
    return claims.Filters(aoi, str(start) if start else None, str(end) if end else None)


def aoi_parcels(conn, settings, source: rasterize.ParcelSource, aoi: str) -> np.ndarray:
    """ogc_fid of the parcels inside the AOI (sorted)."""
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "SELECT p.ogc_fid FROM {p} p JOIN {a} a ON a.name = %s"
                " AND ST_Intersects(p.wkb_geometry, ST_Transform(a.wkb_geometry, ST_SRID(p.wkb_geometry)))"
            ).format(p=table(settings, source.name), a=table(settings, "aois")), (aoi,))
            return np.sort(np.array([r[0] for r in cur.fetchall()], dtype=np.int64))


def make_context(conn, settings, card: str, res: int, aoi, parcels, start, end) -> Context:
    spec = cards.run_spec(settings, card, res)
    cards.card_runs(settings, card)
    for name in (settings.tables.catalogue, "extraction_runs", "extract_grids", "extract_grid_blocks"):
        if not db.table_exists(conn, settings, name):
            raise UserError(f"table {settings.db.schema}.{name} is missing in {db.describe(settings)}; run cbm db init")
    conn.commit()
    if not parcels:
        raise UserError("no parcel table given; pass --parcels TABLE or set extract.parcels")
    filters = check_filters(conn, settings, aoi, start, end)
    source = rasterize.parcel_source(conn, settings, parcels)
    conn.commit()
    pids = aoi_parcels(conn, settings, source, filters.aoi)
    return Context(settings, spec, filters, source, pids)


def _csr(rows, cols, lens, pids):
    """Runs grouped per parcel (the order of a parcel's runs does not matter to the kernels)."""
    order = np.argsort(pids, kind="stable")
    rows, cols, lens, pids = rows[order], cols[order], lens[order], pids[order]
    uniq, starts = np.unique(pids, return_index=True)
    offsets = np.append(starts, pids.size).astype(np.int64)
    return rows, cols, lens, uniq.astype(np.int32), offsets


def scene_runs(ctx: Context, grid, grid_id: int, conn):
    """The window under the AOI's parcels in this scene and their runs grouped per parcel (CSR),
    or None. Kept per worker for the last few scene extents: the next date of a tile reuses it."""
    key = rasterize.grid_key(grid.crs, grid.transform)
    r0, c0 = key.origin(grid.transform)
    memo_key = (grid_id, r0, c0, grid.height, grid.width)
    if memo_key in ctx.scene_memo:
        return ctx.scene_memo[memo_key]
    rows, cols, lens, pids = ctx.cache.runs(conn, ctx.settings, grid_id, r0, c0, grid.height, grid.width)
    keep = np.isin(pids, ctx.aoi_pids)
    rows, cols, lens, pids = rows[keep], cols[keep], lens[keep], pids[keep]
    result = None
    if pids.size:
        wr0, wc0 = int(rows.min()), int(cols.min())
        window = Window(wc0, wr0, int((cols + lens).max()) - wc0, int(rows.max()) + 1 - wr0)
        result = (window, *_csr(rows - wr0, cols - wc0, lens, pids))
    if len(ctx.scene_memo) >= SCENE_MEMO:
        ctx.scene_memo.pop(next(iter(ctx.scene_memo)))
    ctx.scene_memo[memo_key] = result
    return result


def compute(ctx: Context, files, grid, grid_id, conn, g: guard.Guard) -> tuple:
    """Read the window under the parcels and compute; returns (pids, results) or None (no parcels).
    The bands are read in the guard's reader thread, each waited for within the scene's bound."""
    prepared = scene_runs(ctx, grid, grid_id, conn)
    g.check()
    if prepared is None:
        return None
    window, rows, cols, lens, upids, offsets = prepared
    reader = sources.BandReader(ctx.settings, files, window)
    results = []
    timing = {"read": 0.0, "stats": 0.0}

    def timed_read(f):
        t0 = time.perf_counter()
        img = reader.read(f)
        return img, time.perf_counter() - t0

    # decode the next band while the kernels work on this one
    pending = g.submit(timed_read, files[0])
    for i, f in enumerate(files):
        img, dt_read = g.result(pending)
        timing["read"] += dt_read
        if i + 1 < len(files):
            pending = g.submit(timed_read, files[i + 1])
        t0 = time.perf_counter()
        if ctx.spec.histogram:
            nclasses = max(int(img.max()) + 1, 1)
            results.append((f.code, kernels.class_histograms(img, rows, cols, lens, offsets, nclasses)))
        else:
            results.append((f.code, kernels.zonal_stats(img, rows, cols, lens, offsets)))
        timing["stats"] += time.perf_counter() - t0
        del img
    return upids, results, timing, window


def process(conn, ctx: Context, c: claims.Claim, g: guard.Guard) -> SceneResult:
    """Extract one claimed scene run and commit its rows with its status (or an error status).
    Storage calls run through the guard (the scene's bound, the lease looked at while they run)."""
    settings, spec = ctx.settings, ctx.spec
    t0 = time.perf_counter()
    storage.start_counting(settings)
    try:
        files = g.call(sources.band_files, settings, spec, c.product_path)
        grid = g.call(sources.open_grid, settings, files)
        key = rasterize.grid_key(grid.crs, grid.transform)
        grid_id = rasterize.ensure_grid(conn, settings, ctx.source, key)
        g.check()
        out = compute(ctx, files, grid, grid_id, conn, g)
    except SceneError as exc:
        _rollback(conn)
        try:
            with conn.cursor() as cur:
                claims.finish(cur, settings, c, exc.status, 0, exc.detail)
            conn.commit()
        except BaseException:
            _rollback(conn)
            raise
        return SceneResult(exc.status, detail=exc.detail)
    t1 = time.perf_counter()
    g.check_lease()  # read and computed: written unless the scene is not ours any more
    status, nrows, detail = NO_PARCELS, 0, "no parcel of the AOI has pixels in the scene"
    try:
        with conn.cursor() as cur:
            if out is not None:
                pids, results, timing, window = out
                if spec.histogram:
                    nrows = writer.copy_hists(cur, settings, c.obsid, pids, results[0][1])
                else:
                    nrows = writer.copy_sigs(cur, settings, c.obsid, pids, results)
                status, detail = (EXTRACTED, None) if nrows else (NO_PARCELS, "the parcels' pixels are all nodata")
            claims.finish(cur, settings, c, status, nrows, detail)
        conn.commit()  # the rows and the status, together
    except BaseException:
        _rollback(conn)
        raise
    if status != EXTRACTED:
        return SceneResult(status, detail=detail)
    timing.update(total=time.perf_counter() - t0, write=time.perf_counter() - t1)
    return SceneResult(EXTRACTED, nrows, int(pids.size), seconds=timing, fetched=storage.fetched(settings))


def run(settings, card: str, res: int, *, aoi=None, parcels=None, start=None, end=None, once=False,
        out=print) -> int:
    """The worker loop; returns the number of scenes processed. Exits when nothing is left, or on SIGTERM."""
    with guard.StopRequest().on(signal.SIGTERM) as stop:
        return _run(settings, card, res, stop, aoi=aoi, parcels=parcels, start=start, end=end, once=once, out=out)


def _run(settings, card: str, res: int, stop: guard.StopRequest, *, aoi, parcels, start, end, once, out) -> int:
    x = settings.extract
    conn = db.connect(settings)
    try:
        ctx = make_context(conn, settings, card, res, aoi or x.aoi, parcels or x.parcels, start or x.start, end or x.end)
        ctx.stop = stop
        storage.check(settings)
        kernels.warm_up(np.uint8 if ctx.spec.histogram else (np.uint16 if card == "s2" else np.float32),
                        ctx.spec.histogram)
        out(f"worker {ctx.owner}: card {card} run {res} ({', '.join(ctx.spec.codes)}), parcels {ctx.source.name}"
            f" ({ctx.aoi_pids.size} in AOI {ctx.filters.aoi}), products from {storage.describe(settings)}")
        while True:
            try:
                _scenes(conn, ctx, once, out)
                break
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                _close(conn)
                out(f"lost the database {db.describe(settings)} ({one_line(exc, 200)}); a scene in progress "
                    "was not written (it is given back once the database answers)")
                wait_out(settings, out, f"the database {db.describe(settings)}", lambda: _db_problem(settings),
                         stop)
                conn = db.connect(settings)
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:  # while starting
        raise CbmError(f"lost the database {db.describe(settings)} ({one_line(exc, 200)}); nothing was "
                       "claimed") from None
    except guard.Stopped:   # while waiting for the storage or the database
        if ctx.current is not None:
            _try_release(settings, ctx.current, f"given back: {stop.why}", attempt=False)
    finally:
        _close(conn)
    if stop:
        out(f"{stop.why}: stopped after {ctx.done} scene(s)")
    else:
        out(f"no scene left for card {card} run {res}: processed {ctx.done} scene(s)")
    return ctx.done


def _scenes(conn, ctx: Context, once: bool, out) -> None:
    """Claim and process scenes until none is left (or one with `once`), counting them in ctx.done."""
    settings, x = ctx.settings, ctx.settings.extract
    if ctx.current is not None:  # interrupted by a lost database: given back, its attempt not counted
        claims.release(conn, settings, ctx.current, "given back: the worker lost the database", attempt=False)
        ctx.current = None
    while not (once and ctx.done):
        ctx.current = None  # (still set when a lost database ends this function)
        if ctx.stop:
            return
        for obsid in claims.sweep_exhausted(conn, settings, ctx.spec):
            out(f"scene {obsid}: {cards.MAX_ATTEMPTS} (claimed {x.max_attempts} times without finishing)")
        c = claims.claim(conn, settings, ctx.spec, ctx.filters, ctx.owner)
        if c is None:
            if once or claims.live_leases(conn, settings, ctx.spec) == 0:
                break
            ctx.stop.sleep(float(x.poll))  # other workers are busy; one may die and need replacing
            continue
        ctx.current = c
        with guard.Guard(settings, c, ctx.stop) as g:
            try:
                result = process(conn, ctx, c, g)
            except claims.LeaseLost as exc:  # the new owner has it: nothing to give back
                _rollback(conn)
                out(f"scene {c.obsid} {c.reference}: {exc}; nothing written")
                continue
            except guard.Stopped as exc:  # SIGTERM: back to the queue now, not when the lease ends
                _rollback(conn)
                claims.release(conn, settings, c, f"given back: {exc}", attempt=False)
                ctx.current = None
                out(f"scene {c.obsid} {c.reference} run {c.res}: given back at once, {exc}; nothing written, "
                    "its attempt not counted")
                return
            except guard.SceneStuck as exc:
                _rollback(conn)
                _try_release(settings, c, f"timeout: {exc}")
                raise CbmError(f"scene {c.obsid} {c.reference}: {exc}; given back (attempt {c.attempts} of "
                               f"{x.max_attempts}); the worker stops, as GDAL cannot be interrupted (the swarm "
                               "starts a new one)") from None
            except guard.SceneTimeout as exc:
                _rollback(conn)
                claims.release(conn, settings, c, f"timeout: {exc}")
                out(f"scene {c.obsid} {c.reference}: given back, {exc} (attempt {c.attempts} of "
                    f"{x.max_attempts})")
                continue
            except storage.StorageFault as exc:
                _rollback(conn)
                claims.release(conn, settings, c, f"storage: {one_line(exc)}", storage_fault=True)
                out(f"scene {c.obsid} {c.reference}: given back, the storage did not answer ({exc})")
                wait_out(settings, out, storage.describe(settings), lambda: storage.problem(settings), ctx.stop)
                continue
            except CbmError:
                _rollback(conn)
                _try_release(settings, c, "the worker stopped on an error (see its log)")
                raise
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                raise
            except Exception as exc:  # noqa: BLE001 - a bug must not leave the claim dangling
                log.debug("scene %s failed", c.obsid, exc_info=True)
                _rollback(conn)
                _try_release(settings, c, f"{type(exc).__name__}: {exc}")
                raise CbmError(f"scene {c.obsid} {c.reference} failed unexpectedly ({type(exc).__name__}: "
                               f"{one_line(exc)[:200]}); it was given back for another try") from exc
        ctx.done += 1
        secs = result.seconds
        extra = (f", {result.parcels} parcels, {result.rows} rows in {secs['total']:.1f} s"
                 f" (read {secs['read']:.1f} s, stats {secs['stats']:.1f} s, write {secs['write']:.1f} s)"
                 + (f", {result.fetched / 1e6:.1f} MB fetched" if result.fetched is not None else "")
                 if result.status == EXTRACTED else (f": {result.detail}" if result.detail else ""))
        out(f"scene {c.obsid} {c.reference} run {c.res}: {result.status}{extra}")


def _close(conn) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - closing a lost connection
        pass


def _db_problem(settings) -> str | None:
    try:
        _close(db.connect(settings))
    except CbmError as exc:
        return str(exc)
    return None


def wait_out(settings, out, what: str, problem, stop: guard.StopRequest) -> None:
    """Wait until `problem()` says nothing is wrong any more (backoff from extract.backoff, doubled
    up to 120 s), or give up with one line after extract.outage_wait seconds; guard.Stopped on SIGTERM."""
    x = settings.extract
    delay, waited = max(float(x.backoff), 0.1), 0.0
    while True:
        out(f"waiting {delay:.0f} s for {what}")
        stop.sleep(delay)
        stop.check()
        waited += delay
        why = problem()
        if why is None:
            out(f"{what} answers again")
            return
        if waited >= float(x.outage_wait):
            raise CbmError(f"{why}, for {waited:.0f} s; the scenes are back in the queue, run the workers again "
                           "when it answers")
        delay = min(delay * 2, MAX_BACKOFF)


def _rollback(conn) -> None:
    """Roll back if the connection is still there (a lost connection has nothing to roll back)."""
    if not conn.closed:
        try:
            conn.rollback()
        except psycopg2.Error:
            pass


def _try_release(settings, c: claims.Claim, detail: str, attempt: bool = True) -> None:
    try:
        conn = db.connect(settings)
        try:
            claims.release(conn, settings, c, detail, attempt=attempt)
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - best effort; the lease expires anyway
        log.warning("could not give scene %s back (%s); its lease will expire", c.obsid, exc)
