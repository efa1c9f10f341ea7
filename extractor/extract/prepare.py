"""`cbm extract prepare`: build the rasterized parcels for the grids the catalogue needs.

S2: the UTM zones (dias_catalogue.epsg) of the scenes over the AOI, at 10 m and 20 m.
bs/c6: the grids read from the scenes' own files (their CRS is read, never assumed).
Workers build a missing grid on demand too; preparing first avoids the wait on the first scenes.
"""

from __future__ import annotations

import time

from psycopg2 import sql

from extractor.db import table
from extractor.errors import UserError
from extractor.extract import cards, rasterize, sources, storage, worker
from extractor.extract.cards import SceneError


def _scenes(conn, settings, card: str, filters):
    with conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL(
                "SELECT c.id, c.product_path, c.epsg FROM {cat} c WHERE c.card = %(card)s"
                " AND EXISTS (SELECT 1 FROM {aois} a WHERE a.name = %(aoi)s AND ST_Intersects(c.footprint, a.wkb_geometry))"
                " AND (%(start)s::timestamp IS NULL OR c.obstime >= %(start)s::timestamp)"
                " AND (%(end)s::timestamp IS NULL OR c.obstime < %(end)s::timestamp) ORDER BY c.obstime"
            ).format(cat=table(settings, "catalogue"), aois=table(settings, "aois")),
                {"card": card, "aoi": filters.aoi, "start": filters.start, "end": filters.end})
            return cur.fetchall()


def grid_keys(conn, settings, filters, cards_wanted) -> tuple[dict, list[str]]:
    keys: dict[rasterize.GridKey, str] = {}
    notes = []
    for card in cards_wanted:
        scenes = _scenes(conn, settings, card, filters)
        if card == "s2":
            for epsg in sorted({e for _, _, e in scenes if e}):
                for res in (10, 20):
                    keys.setdefault(rasterize.utm_key(epsg, res), f"s2 EPSG:{epsg} {res} m")
            continue
        spec = cards.run_spec(settings, card, cards.RESOLUTIONS[card][0])
        why = storage.problem(settings) if scenes else None
        if why:  # the S1 grids are read from the products; the workers rasterize them when they meet them
            notes.append(f"{card}: the grids of {len(scenes)} scene(s) were not read here ({why}); the workers "
                         "rasterize the parcels for them")
            continue
        unread = 0
        for _, path, _ in scenes:
            try:
                g = sources.open_grid(settings, sources.band_files(settings, spec, path)[:1])
            except SceneError:
                unread += 1
                continue
            except storage.StorageFault as exc:
                notes.append(f"{card}: the storage stopped answering ({exc}); the workers rasterize the rest")
                break
            key = rasterize.grid_key(g.crs, g.transform)
            keys.setdefault(key, f"{card} {key.label()}")
        if unread:
            notes.append(f"{card}: {unread} scene(s) without readable files were skipped (the worker reports them)")
    return keys, notes


def prepare(conn, settings, *, aoi=None, parcels=None, start=None, end=None, cards_wanted=None, dry_run=False):
    """Yields progress lines."""
    x = settings.extract
    filters = worker.check_filters(conn, settings, aoi or x.aoi, start or x.start, end or x.end)
    name = parcels or x.parcels
    if not name:
        raise UserError("no parcel table given; pass --parcels TABLE or set extract.parcels")
    source = rasterize.parcel_source(conn, settings, name)
    conn.commit()
    keys, notes = grid_keys(conn, settings, filters, cards_wanted or cards.CARDS)
    yield from notes
    if not keys:
        yield f"no catalogued scene over AOI {filters.aoi} needs a grid; run cbm catalog sync first"
        return
    for key, what in keys.items():
        if dry_run:
            yield f"would rasterize {source.name} for {what}"
            continue
        t0 = time.perf_counter()
        try:
            grid_id = rasterize.ensure_grid(conn, settings, source, key)
        except SceneError as exc:
            yield f"{what}: cannot rasterize ({exc.detail})"
            continue
        with conn:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SELECT parcels_n, runs_n, built_at FROM {} WHERE id = %s").format(
                    table(settings, "extract_grids")), (grid_id,))
                n, runs, built = cur.fetchone()
        yield f"{what}: {n} parcels, {runs} pixel runs ({time.perf_counter() - t0:.1f} s)"
