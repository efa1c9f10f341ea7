"""Rasterized parcels per (parcel table, CRS, pixel grid), shared by all workers through PostGIS.

Representation: the parcels' pixels as runs along grid rows, (row, col, length, pid), in the
coordinates of a grid that is global for its CRS and pixel size: pixel (r, c) has its top-left
corner at (phase_x + c * res_x, phase_y - r * res_y). All S2 tiles of one UTM zone share the
10 m and 20 m grids (tile origins are multiples of 60 m), so one build serves every tile of the
zone; a CARD-BS/COH file on another grid gets a grid of its own.
Runs are grouped in blocks of BLOCK x BLOCK pixels; each block is one zlib-compressed bytea row
in extract_grid_blocks, so a scene loads only the blocks under its extent.

Pixel rule: a pixel belongs to a parcel when its centre is inside the parcel (GDAL's default
rasterization, as PostGIS ST_AsRaster). Parcels are rasterized into a label raster per block;
parcels whose interiors overlap another parcel are rasterized one by one, so every parcel gets
all its pixels even where parcels overlap.
A build takes a transaction-scoped advisory lock on its key: concurrent workers needing the same
grid wait for the first build instead of repeating it.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import psycopg2
import psycopg2.errors
import rasterio.features
import shapely
from numba import njit
from psycopg2 import sql
from rasterio import Affine
from rasterio.crs import CRS

from extractor.errors import CbmError, UserError, one_line
from extractor.db import table
from extractor.extract.cards import PARCEL_SQL, SceneError

log = logging.getLogger(__name__)

BLOCK = 4096
CACHE_BYTES = 512 << 20  # decoded blocks kept in a worker's memory


@dataclass(frozen=True)
class GridKey:
    crs: str          # 'EPSG:32631' or the WKT of a CRS without EPSG code
    res_x: float
    res_y: float
    phase_x: float
    phase_y: float

    def origin(self, transform: Affine) -> tuple[int, int]:
        """(row, col) in this grid of the top-left pixel of a raster with this transform."""
        return (int(round((self.phase_y - transform.f) / self.res_y)),
                int(round((transform.c - self.phase_x) / self.res_x)))

    def label(self) -> str:
        crs = self.crs if self.crs.startswith("EPSG:") else "custom CRS"
        return f"{crs} {self.res_x:g} m grid" if self.crs.startswith("EPSG:") else f"{crs} {self.res_x:g} grid"


def _phase(origin: float, res: float) -> float:
    p = origin - math.floor(origin / res) * res
    if abs(p - res) < 1e-9 * res or abs(p) < 1e-9 * res:
        return 0.0
    return round(p, 12)


def crs_text(crs) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def grid_key(crs, transform: Affine) -> GridKey:
    res_x, res_y = round(transform.a, 12), round(-transform.e, 12)
    return GridKey(crs_text(crs), res_x, res_y, _phase(transform.c, res_x), _phase(transform.f, res_y))


def utm_key(epsg: int, res: int) -> GridKey:
    """The grid of every S2 tile of a UTM zone at a resolution."""
    return GridKey(f"EPSG:{epsg}", float(res), float(res), 0.0, 0.0)


# -- the parcel table ----------------------------------------------------------------------
@dataclass(frozen=True)
class ParcelSource:
    name: str        # table name (validated)
    oid: int         # pg_class oid: a reloaded table is a new source
    rows: int
    srid: int


def parcel_source(conn, settings, name: str) -> ParcelSource:
    t = table(settings, name)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)::oid", (f'"{settings.db.schema}"."{name}"',))
        oid = cur.fetchone()[0]
        if oid is None:
            raise UserError(f"parcel table {settings.db.schema}.{name} does not exist; load it with "
                            "cbm parcels load FILE --table NAME or fix --parcels / extract.parcels")
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema=%s AND table_name=%s",
                    (settings.db.schema, name))
        cols = {r[0] for r in cur.fetchall()}
        if not {"ogc_fid", "wkb_geometry"} <= cols:
            raise UserError(f"parcel table {name} lacks ogc_fid/wkb_geometry; load it with cbm parcels load")
        cur.execute(sql.SQL("SELECT count(*), max(ST_SRID(wkb_geometry)) FROM {}").format(t))
        rows, srid = cur.fetchone()
    if rows == 0:
        raise UserError(f"parcel table {name} is empty; load parcels with cbm parcels load FILE --table {name}")
    return ParcelSource(name, int(oid), int(rows), int(srid or 0))


# -- building ------------------------------------------------------------------------------
@njit(cache=True)
def _rle(labels, row0, col0):
    h, w = labels.shape
    n = 0
    for r in range(h):
        prev = 0
        for c in range(w):
            v = labels[r, c]
            if v != 0 and v != prev:
                n += 1
            prev = v
    rows = np.empty(n, np.int32)
    cols = np.empty(n, np.int32)
    lens = np.empty(n, np.int32)
    labs = np.empty(n, np.int32)
    k = -1
    for r in range(h):
        prev = 0
        for c in range(w):
            v = labels[r, c]
            if v != 0:
                if v != prev:
                    k += 1
                    rows[k] = row0 + r
                    cols[k] = col0 + c
                    lens[k] = 1
                    labs[k] = v
                else:
                    lens[k] += 1
            prev = v
    return rows, cols, lens, labs


def _transform_for(key: GridKey, row: int, col: int) -> Affine:
    return Affine(key.res_x, 0.0, key.phase_x + col * key.res_x, 0.0, -key.res_y, key.phase_y - row * key.res_y)


def _fetch_geometries(conn, settings, source: ParcelSource, key: GridKey):
    """Parcels reprojected to the grid's CRS (in PostGIS), or SceneError('Parcel SQL')."""
    t = table(settings, source.name)
    target = None
    if key.crs.startswith("EPSG:"):
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM spatial_ref_sys WHERE srid = %s", (int(key.crs[5:]),))
            if cur.fetchone():
                target = int(key.crs[5:])
    if target is None:
        target = CRS.from_user_input(key.crs).to_wkt()
    query = sql.SQL("SELECT ogc_fid, ST_AsBinary(ST_Transform(wkb_geometry, %s)) FROM {}"
                    " WHERE wkb_geometry IS NOT NULL AND NOT ST_IsEmpty(wkb_geometry)").format(t)
    try:
        with conn.cursor() as cur:
            cur.execute("SAVEPOINT fetch_parcels")
            cur.execute(query, (target,))
            rows = cur.fetchall()
            cur.execute("RELEASE SAVEPOINT fetch_parcels")
    except psycopg2.Error as exc:
        if isinstance(exc, psycopg2.OperationalError):
            raise
        with conn.cursor() as cur:
            cur.execute("ROLLBACK TO SAVEPOINT fetch_parcels")
        reason = one_line(exc)
        raise SceneError(PARCEL_SQL, f"parcels of {source.name} cannot be reprojected to {key.crs[:80]}: {reason}") from None
    fids = np.array([r[0] for r in rows], dtype=np.int64)
    geoms = shapely.from_wkb([bytes(r[1]) for r in rows])
    return fids, geoms


def _overlapping(geoms) -> np.ndarray:
    """Indexes of parcels whose interior overlaps another parcel's interior."""
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    keep = left < right
    left, right = left[keep], right[keep]
    if left.size == 0:
        return np.empty(0, np.int64)
    inner = shapely.relate_pattern(geoms[left], geoms[right], "2********")
    return np.unique(np.concatenate([left[inner], right[inner]]))


def rasterize_parcels(fids, geoms, key: GridKey):
    """All pixel runs (row, col, len, pid) of the parcels in the grid, sorted by block."""
    b = shapely.bounds(geoms)
    ok = np.isfinite(b).all(axis=1)
    # pixel index ranges touched by the bounding boxes (global grid)
    c0 = np.floor((b[:, 0] - key.phase_x) / key.res_x).astype(np.int64)
    c1 = np.floor((b[:, 2] - key.phase_x) / key.res_x).astype(np.int64)
    r0 = np.floor((key.phase_y - b[:, 3]) / key.res_y).astype(np.int64)
    r1 = np.floor((key.phase_y - b[:, 1]) / key.res_y).astype(np.int64)
    idx_ok = np.flatnonzero(ok)
    single = np.zeros(len(geoms), bool)
    single[idx_ok[_overlapping(geoms[idx_ok])]] = True
    parts = []
    # label raster per block for the parcels that do not overlap each other
    batch = np.flatnonzero(ok & ~single)
    if batch.size:
        br0, br1 = r0[batch] // BLOCK, r1[batch] // BLOCK
        bc0, bc1 = c0[batch] // BLOCK, c1[batch] // BLOCK
        blocks: dict[tuple[int, int], list[int]] = {}
        for i, a, z, p, q in zip(batch, br0, br1, bc0, bc1):
            for br in range(a, z + 1):
                for bc in range(p, q + 1):
                    blocks.setdefault((br, bc), []).append(i)
        for (br, bc), members in blocks.items():
            # the part of the block the members cover
            rr0 = max(br * BLOCK, int(r0[members].min()))
            rr1 = min(br * BLOCK + BLOCK - 1, int(r1[members].max()))
            cc0 = max(bc * BLOCK, int(c0[members].min()))
            cc1 = min(bc * BLOCK + BLOCK - 1, int(c1[members].max()))
            shape = (rr1 - rr0 + 1, cc1 - cc0 + 1)
            labels = rasterio.features.rasterize(
                ((geoms[i], int(i) + 1) for i in members), out_shape=shape,
                transform=_transform_for(key, rr0, cc0), fill=0, dtype="int32", all_touched=False)
            parts.append(_rle(labels, rr0, cc0))
    for i in np.flatnonzero(single):
        shape = (int(r1[i] - r0[i] + 1), int(c1[i] - c0[i] + 1))
        labels = rasterio.features.rasterize(
            [(geoms[i], int(i) + 1)], out_shape=shape, transform=_transform_for(key, int(r0[i]), int(c0[i])),
            fill=0, dtype="int32", all_touched=False)
        parts.append(_rle(labels, int(r0[i]), int(c0[i])))
    if parts:
        rows, cols, lens, labs = (np.concatenate(x) for x in zip(*parts))
    else:
        rows = cols = lens = labs = np.empty(0, np.int32)
    # split runs at block column edges so each run lies in one block
    rows, cols, lens, labs = _split_at_blocks(rows, cols, lens, labs)
    pids = fids[labs - 1].astype(np.int32) if labs.size else labs
    return rows, cols, lens, pids


def _split_at_blocks(rows, cols, lens, labs):
    end = cols.astype(np.int64) + lens
    crosses = (cols // BLOCK) != ((end - 1) // BLOCK)
    if not crosses.any():
        return rows, cols, lens, labs
    out = [(rows[~crosses], cols[~crosses], lens[~crosses], labs[~crosses])]
    for r, c, e, lab in zip(rows[crosses], cols[crosses], end[crosses], labs[crosses]):
        pieces = []
        start = int(c)
        while start < e:
            stop = min(int(e), (start // BLOCK + 1) * BLOCK)
            pieces.append((r, start, stop - start, lab))
            start = stop
        arr = np.array(pieces, dtype=np.int64)
        out.append(tuple(arr[:, j].astype(np.int32) for j in range(4)))
    return tuple(np.concatenate([o[j] for o in out]) for j in range(4))


def _pack(rows, cols, lens, pids) -> bytes:
    return zlib.compress(np.concatenate([rows, cols, lens, pids]).astype("<i4").tobytes(), 1)


def _unpack(data: bytes, n: int):
    a = np.frombuffer(zlib.decompress(data), dtype="<i4")
    return a[:n], a[n:2 * n], a[2 * n:3 * n], a[3 * n:4 * n]


# -- the store -----------------------------------------------------------------------------
def _find(cur, settings, source: ParcelSource, key: GridKey):
    grids = table(settings, "extract_grids")
    cur.execute(sql.SQL("SELECT id, source_oid, source_rows FROM {} WHERE parcels=%s AND crs=%s AND res_x=%s"
                        " AND res_y=%s AND phase_x=%s AND phase_y=%s").format(grids),
                (source.name, key.crs, key.res_x, key.res_y, key.phase_x, key.phase_y))
    return cur.fetchone()


def ensure_grid(conn, settings, source: ParcelSource, key: GridKey) -> int:
    """The id of the stored grid for (parcel table, key); built (and committed) if missing or stale.

    Raises SceneError('Parcel SQL') when the parcels cannot be put on this grid, and CbmError when
    the store cannot be written (e.g. the database disk is full): then nothing is stored."""
    with conn.cursor() as cur:
        row = _find(cur, settings, source, key)
    conn.commit()
    if row and row[1] == source.oid and row[2] == source.rows:
        return row[0]
    lock_key = f"cbm-grid|{source.name}|{key}"
    try:
        with conn:  # one transaction: the whole grid is stored, or nothing
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock_key,))
                row = _find(cur, settings, source, key)
                if row and row[1] == source.oid and row[2] == source.rows:
                    return row[0]
                if row:  # the parcel table was reloaded since: rebuild
                    cur.execute(sql.SQL("DELETE FROM {} WHERE id=%s").format(table(settings, "extract_grids")), (row[0],))
                log.info("rasterizing %s on the %s", source.name, key.label())
                fids, geoms = _fetch_geometries(conn, settings, source, key)
                rows, cols, lens, pids = rasterize_parcels(fids, geoms, key)
                cur.execute(sql.SQL("INSERT INTO {} (parcels, crs, res_x, res_y, phase_x, phase_y, block,"
                                    " source_oid, source_rows, parcels_n, runs_n) VALUES"
                                    " (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) RETURNING id").format(
                                        table(settings, "extract_grids")),
                            (source.name, key.crs, key.res_x, key.res_y, key.phase_x, key.phase_y, BLOCK,
                             source.oid, source.rows, int(np.unique(pids).size), int(rows.size)))
                grid_id = cur.fetchone()[0]
                brow, bcol = rows // BLOCK, cols // BLOCK
                order = np.lexsort((bcol, brow))
                rows, cols, lens, pids, brow, bcol = (x[order] for x in (rows, cols, lens, pids, brow, bcol))
                edges = np.flatnonzero(np.diff(brow.astype(np.int64) * 1_000_003 + bcol)) + 1
                starts = np.concatenate([[0], edges]) if rows.size else np.empty(0, np.int64)
                ends = np.concatenate([edges, [rows.size]]) if rows.size else np.empty(0, np.int64)
                insert = sql.SQL("INSERT INTO {} (grid_id, brow, bcol, runs_n, data) VALUES (%s,%s,%s,%s,%s)").format(
                    table(settings, "extract_grid_blocks"))
                for s, e in zip(starts, ends):
                    cur.execute(insert, (grid_id, int(brow[s]), int(bcol[s]), int(e - s),
                                         psycopg2.Binary(_pack(rows[s:e], cols[s:e], lens[s:e], pids[s:e]))))
                log.info("stored %d runs of %d parcels in %d blocks", rows.size, np.unique(pids).size, len(starts))
                return grid_id
    except psycopg2.errors.DiskFull as exc:
        raise CbmError(f"cannot store the rasterized parcels ({key.label()}): the database disk is full "
                       f"({one_line(exc)[:160]}); free space on the database volume and re-run") from None


class GridCache:
    """Blocks of stored grids, decoded once per worker and kept (LRU, bounded)."""

    def __init__(self, limit: int = CACHE_BYTES):
        self.blocks: OrderedDict = OrderedDict()
        self.size = 0
        self.limit = limit

    def runs(self, conn, settings, grid_id: int, row0: int, col0: int, height: int, width: int):
        """Runs inside rows [row0, row0+height) x cols [col0, col0+width), clipped, in window coordinates."""
        br0, br1 = row0 // BLOCK, (row0 + height - 1) // BLOCK
        bc0, bc1 = col0 // BLOCK, (col0 + width - 1) // BLOCK
        wanted = [(grid_id, br, bc) for br in range(br0, br1 + 1) for bc in range(bc0, bc1 + 1)]
        missing = [w for w in wanted if w not in self.blocks]
        if missing:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT brow, bcol, runs_n, data FROM {} WHERE grid_id=%s AND brow BETWEEN %s AND %s"
                                    " AND bcol BETWEEN %s AND %s").format(table(settings, "extract_grid_blocks")),
                            (grid_id, br0, br1, bc0, bc1))
                found = {(grid_id, r[0], r[1]): _unpack(bytes(r[3]), r[2]) for r in cur.fetchall()}
            conn.commit()
            for w in missing:
                arrays = found.get(w)
                self.blocks[w] = arrays
                self.size += sum(a.nbytes for a in arrays) if arrays else 0
        parts = []
        for w in wanted:
            self.blocks.move_to_end(w)
            if self.blocks[w] is not None:
                parts.append(self.blocks[w])
        while self.size > self.limit and len(self.blocks) > len(wanted):
            _, arrays = self.blocks.popitem(last=False)
            self.size -= sum(a.nbytes for a in arrays) if arrays else 0
        if not parts:
            e = np.empty(0, np.int32)
            return e, e, e, e
        rows, cols, lens, pids = (np.concatenate(x) for x in zip(*parts))
        return clip_runs(rows, cols, lens, pids, row0, col0, height, width)


def clip_runs(rows, cols, lens, pids, row0, col0, height, width):
    r = rows.astype(np.int64) - row0
    c = cols.astype(np.int64) - col0
    end = np.minimum(c + lens, width)
    start = np.maximum(c, 0)
    keep = (r >= 0) & (r < height) & (end > start)
    return (r[keep].astype(np.int32), start[keep].astype(np.int32), (end - start)[keep].astype(np.int32),
            pids[keep])
