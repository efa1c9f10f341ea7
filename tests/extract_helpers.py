"""A small generated world for the extraction tests: parcels with the awkward cases, S2 / CARD-BS /
COH6 products with the real layouts under an eodata root, and the catalogue rows pointing at them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
import shapely
from rasterio import Affine
from rasterio.warp import transform_bounds

from conftest import run_cbm
from sandbox import synthetic

EPSG = 32631            # the S2 tile's UTM zone
PARCEL_SRID = 3035      # the parcels come in another CRS (reprojected by the engine)
X0, Y0 = 600000.0, 5700000.0
N10 = 60                # 60 x 60 pixels at 10 m, 30 x 30 at 20 m
EMPTY_X0 = X0 + 1200.0  # a second tile east of the first, without parcels
NODATA = (slice(48, 60), slice(0, 21))  # rows/cols (10 m) that are 0 in every band


def rect(x, y, w, h):
    return shapely.box(X0 + x, Y0 - y - h, X0 + x + w, Y0 - y)


def parcels() -> dict[int, shapely.Geometry]:
    """ogc_fid -> geometry in EPSG:32631 (offsets in metres from the tile's top-left corner)."""
    outer = rect(160.2, 20.4, 150.1, 150.3)
    hole = rect(200.3, 60.1, 50.2, 50.4)
    tri = shapely.Polygon([(X0 + 300.5, Y0 - 400.2), (X0 + 420.7, Y0 - 400.9), (X0 + 350.3, Y0 - 470.6)])
    return {
        1: rect(23.3, 21.7, 103.1, 81.9),                                   # plain
        2: outer.difference(hole),                                          # with a hole
        3: shapely.MultiPolygon([rect(340.5, 30.2, 60.7, 40.3), rect(420.1, 120.3, 50.2, 70.4)]),
        4: rect(540.3, 200.7, 120.2, 80.1),                                 # over the east edge
        5: rect(302.1, 302.2, 5.5, 5.4),                                    # smaller than a pixel, on a centre
        6: rect(311.2, 311.3, 3.0, 3.0),                                    # smaller than a pixel, no centre
        7: rect(30.4, 500.6, 100.2, 60.2),                                  # all nodata
        8: rect(180.2, 490.4, 100.1, 80.3),                                 # partly nodata
        9: tri,                                                             # a triangle
        10: rect(440.2, 300.3, 80.4, 60.2),                                 # overlaps 11
        11: rect(480.5, 330.1, 80.3, 60.6),
        12: rect(100.3, -30.2, 50.1, 60.3),                                 # over the north edge
    }


def s2_bands(seed: int):
    rng = np.random.default_rng(seed)
    b10 = {b: rng.integers(1, 10000, (N10, N10), dtype=np.uint16) for b in ("B02", "B03", "B04", "B08")}
    b20 = {b: rng.integers(1, 10000, (N10 // 2, N10 // 2), dtype=np.uint16)
           for b in ("B05", "B06", "B07", "B8A", "B11", "B12")}
    b20["SCL"] = rng.integers(0, 12, (N10 // 2, N10 // 2), dtype=np.uint8)
    for a in b10.values():
        a[NODATA] = 0
    for a in b20.values():
        a[NODATA[0].start // 2:, :NODATA[1].stop // 2] = 0
    return b10, b20


@dataclass
class Scene:
    card: str
    reference: str
    obstime: dt.datetime
    path: str
    bounds_utm: tuple  # (minx, miny, maxx, maxy) in EPSG:32631
    epsg: int | None = None
    tile: str | None = None
    arrays: dict = field(default_factory=dict)


@dataclass
class World:
    root: Path
    scenes: list[Scene]


def s1_grid(crs: str, res: float):
    """A grid in another CRS over the tile (plus a margin), with an origin off the round numbers."""
    w, s, e, n = transform_bounds(f"EPSG:{EPSG}", crs, X0 - 100, Y0 - N10 * 10 - 100, X0 + N10 * 10 + 100, Y0 + 100)
    transform = Affine(res, 0, w + res * 0.37, 0, -res, n - res * 0.21)
    width, height = int((e - w) / res), int((n - s) / res)
    return transform, width, height


def make_world(root: Path, s2_dates=(dt.datetime(2024, 3, 1, 10, 30, 31), dt.datetime(2024, 3, 11, 10, 30, 31)),
               with_s1=True, with_empty=True) -> World:
    scenes = []
    full = (X0, Y0 - N10 * 10, X0 + N10 * 10, Y0)
    for i, when in enumerate(s2_dates):
        b10, b20 = s2_bands(100 + i)
        path = synthetic.write_s2(root, when, "31UFS", EPSG, X0, Y0, b10, b20)
        scenes.append(Scene("s2", path.rsplit("/", 1)[1], when, path, full, EPSG, "31UFS", {**b10, **b20}))
    if with_empty:
        when = s2_dates[0] + dt.timedelta(minutes=1)
        b10, b20 = s2_bands(99)
        path = synthetic.write_s2(root, when, "31UGS", EPSG, EMPTY_X0, Y0, b10, b20)
        scenes.append(Scene("s2", path.rsplit("/", 1)[1], when, path,
                            (EMPTY_X0, Y0 - N10 * 10, EMPTY_X0 + N10 * 10, Y0), EPSG, "31UGS", {**b10, **b20}))
    if with_s1:
        rng = np.random.default_rng(7)
        when = dt.datetime(2024, 3, 2, 5, 40, 9)
        t, w, h = s1_grid("EPSG:4326", 0.000123)
        vv, vh = (rng.uniform(0.001, 0.5, (h, w)).astype(np.float32) for _ in range(2))
        vv[-8:, :] = 0
        path = synthetic.write_bs(root, when, "EPSG:4326", t, vv, vh)
        scenes.append(Scene("bs", path.rsplit("/", 1)[1], when, path, full, arrays={"VV": vv, "VH": vh,
                                                                                    "crs": "EPSG:4326", "transform": t}))
        t, w, h = s1_grid("EPSG:3035", 20.0)
        vv, vh = (rng.uniform(0.0, 1.0, (h, w)).astype(np.float32) for _ in range(2))
        path = synthetic.write_c6(root, when, "EPSG:3035", t, vv, vh)
        scenes.append(Scene("c6", path.rsplit("/", 1)[1], when, path, full, arrays={"VV": vv, "VH": vh,
                                                                                    "crs": "EPSG:3035", "transform": t}))
    return World(root, scenes)


def init_db(dbenv, world: World, parcel_table: str = "parcels", aoi: str = "site", with_parcels=True):
    proc = run_cbm("db", "init", env=dbenv)
    assert proc.returncode == 0, proc.stderr
    dbenv.query(f"CREATE TABLE {parcel_table} (ogc_fid integer PRIMARY KEY, crop text,"
                f" wkb_geometry geometry(MultiPolygon, {PARCEL_SRID}))")
    dbenv.query(f"CREATE INDEX ON {parcel_table} USING gist (wkb_geometry)")
    if with_parcels:
        for fid, g in parcels().items():
            dbenv.query(f"INSERT INTO {parcel_table} VALUES (%s, 'wheat', ST_Multi(ST_Transform("
                        f"ST_GeomFromText(%s, {EPSG}), {PARCEL_SRID})))", (fid, g.wkt))
    dbenv.query(f"INSERT INTO aois (name, wkb_geometry) SELECT %s, ST_Transform(ST_MakeEnvelope(%s, %s, %s, %s, {EPSG}), 4326)",
                (aoi, X0 - 200, Y0 - N10 * 10 - 200, EMPTY_X0 + N10 * 10 + 200, Y0 + 200))
    for s in world.scenes:
        add_scene(dbenv, s)


def add_scene(dbenv, s: Scene, reference: str | None = None, path: str | None = None) -> int:
    sensor = s.reference[1:3]
    return dbenv.query(
        "INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint, product_path, tile, epsg)"
        f" VALUES (%s, %s, %s, %s, ST_Multi(ST_Transform(ST_MakeEnvelope(%s, %s, %s, %s, {EPSG}), 4326)), %s, %s, %s)"
        " RETURNING id",
        (s.obstime, reference or s.reference, sensor, s.card, *s.bounds_utm, path or s.path, s.tile, s.epsg))[0][0]


def extract_env(dbenv, world: World, **extra) -> dict:
    return {**dbenv, "CBM_EODATA_SOURCE": "folder", "CBM_EODATA_ROOT": str(world.root), "CBM_EXTRACT_AOI": "site",
            "CBM_EXTRACT_PARCELS": "parcels",
            **{f"CBM_EXTRACT_{k.upper()}": str(v) for k, v in extra.items()}}


def parcel_geometries(dbenv, crs_srid: int | None = None, crs_wkt: str | None = None) -> dict[int, shapely.Geometry]:
    """The parcels as the database reprojects them into a scene's CRS."""
    target = crs_srid if crs_srid is not None else crs_wkt
    rows = dbenv.query("SELECT ogc_fid, ST_AsBinary(ST_Transform(wkb_geometry, %s)) FROM parcels", (target,))
    return {fid: shapely.from_wkb(bytes(w)) for fid, w in rows}


def pixel_values(geom, array: np.ndarray, transform: Affine) -> np.ndarray:
    """The pixels whose centre is inside the parcel, rasterized by GDAL one parcel at a time."""
    mask = rasterio.features.rasterize([(geom, 1)], out_shape=array.shape, transform=transform, fill=0,
                                       dtype="uint8", all_touched=False).astype(bool)
    return array[mask]


def sigs(dbenv, obsid: int) -> dict:
    rows = dbenv.query("SELECT pid, trim(band), count, mean, std, min, max, p25, p50, p75 FROM sigs WHERE obsid = %s",
                       (obsid,))
    return {(r[0], r[1]): r[2:] for r in rows}


def scene_id(dbenv, reference: str) -> int:
    return dbenv.query("SELECT id FROM dias_catalogue WHERE reference = %s", (reference,))[0][0]
