"""Parcel files for the tests, made from the real samples in examples/parcels/:
the DK shapefile as GeoJSON (with a bow-tie, a point, an empty and a null geometry added) and the
NL GeoPackage as GeoParquet (WKB, PROJJSON CRS in the `geo` metadata)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import PARCEL_SAMPLES

DK_SHP = PARCEL_SAMPLES / "dk_marker_2026" / "Marker_2026.shp"
NL_GPKG = PARCEL_SAMPLES / "nl_brp_2023" / "brpgewaspercelen_definitief_2023.gpkg"

# EPSG:25832 coordinates inside Denmark
BOWTIE = {"type": "Polygon", "coordinates": [[[500000, 6200000], [500100, 6200100], [500100, 6200000],
                                              [500000, 6200100], [500000, 6200000]]]}
POINT = {"type": "Point", "coordinates": [500000, 6200000]}
EMPTY = {"type": "Polygon", "coordinates": []}


def dk_geojson(folder: Path, extra: list[dict] | None = None, name: str = "dk.geojson") -> Path:
    """The 100 DK parcels as GeoJSON in EPSG:25832 (old-style `crs` member), plus `extra` geometries."""
    import pyogrio.raw

    path = folder / name
    meta, _, geometry, field_data = pyogrio.raw.read(DK_SHP)
    pyogrio.raw.write(path, geometry, field_data, meta["fields"], crs=meta["crs"], driver="GeoJSON",
                      geometry_type="Polygon", encoding="UTF-8")
    doc = json.loads(path.read_text())
    template = doc["features"][0]["properties"]
    for i, geom in enumerate(extra or []):
        doc["features"].append({"type": "Feature", "properties": {**template, "Marknr": f"extra-{i}"},
                                "geometry": geom})
    path.write_text(json.dumps(doc))
    return path


def dk_geopackage(folder: Path) -> Path:
    """The DK parcels as a GeoPackage written by GDAL: its fid column is called `fid`."""
    import pyogrio.raw

    path = folder / "dk.gpkg"
    meta, _, geometry, field_data = pyogrio.raw.read(DK_SHP)
    pyogrio.raw.write(path, geometry, field_data, meta["fields"], crs=meta["crs"], driver="GPKG",
                      geometry_type="Polygon", encoding="UTF-8", layer="marker")
    return path


def nl_geoparquet(folder: Path) -> Path:
    """The NL parcels as GeoParquet 1.1: WKB column `geometry`, CRS as PROJJSON (EPSG:28992)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyogrio.raw import read_arrow

    meta, table = read_arrow(NL_GPKG, return_fids=True)   # keeps the fid as column `id`
    field = table.schema.field(meta["geometry_name"])
    crs = json.loads(field.metadata[b"ARROW:extension:metadata"])["crs"]
    geom = table.column(meta["geometry_name"]).cast(pa.binary())
    table = table.drop_columns([meta["geometry_name"]]).append_column("geometry", geom)
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs}}}
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    path = folder / "nl.parquet"
    pq.write_table(table, path)
    return path


def dk_without_prj(folder: Path) -> Path:
    for ext in (".shp", ".shx", ".dbf"):
        shutil.copy(DK_SHP.with_suffix(ext), folder / f"noprj{ext}")
    return folder / "noprj.shp"


def feature_collection(folder: Path, name: str, geometries: list[dict]) -> Path:
    path = folder / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"n": i}, "geometry": g} for i, g in enumerate(geometries)]}))
    return path


def init_schema() -> None:
    """`cbm db init` in-process, on the database the PG* variables point at."""
    from extractor import db, schema, settings

    s = settings.load()
    with db.session(s) as conn:
        schema.init_schema(conn, s)


def snapshot(dbenv) -> list:
    """What a user could see in the database: every table with its row count, and the AOIs."""
    tables = [r[0] for r in dbenv.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")]
    state = [(t, dbenv.query(f'SELECT count(*) FROM public."{t}"')[0][0]) for t in tables]
    if "aois" in tables:
        state.append(dbenv.query("SELECT name, ST_AsText(wkb_geometry) FROM aois ORDER BY name"))
    return state
