"""`cbm aoi add` and `cbm aoi list`: the areas of interest in the seed's `aois(name, wkb_geometry)`
table (a Polygon in EPSG:4326), which the catalog sync and the UTM zones are computed over.

An AOI comes from
  * a parcel table: the extent of its parcels as a lon/lat polygon. The seed transforms the four
    corners of the projected extent; its straight lon/lat edges cut off parcels where the projected
    edges bulge (e.g. the middle of the northern edge in UTM). We densify the extent's edges
    before transforming and take the lon/lat bounding box, so every parcel is inside the AOI.
  * a GeoJSON file in EPSG:4326: one Polygon is kept as it is; a MultiPolygon or several
    features become the convex hull of all their polygons.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg2
from psycopg2 import sql

from extractor import db
from extractor.errors import CbmError, UserError, one_line
from extractor.parcels import parcel_table, require_table

NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
POLYGONAL = ("Polygon", "MultiPolygon")


def check_aoi_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise UserError(f"AOI name {name!r} is not valid; use lower-case letters, digits and _ (max 48): "
                        "it becomes part of table names such as <aoi>32632_10_rast")
    return name


def _aois(conn, settings):
    require_table(conn, settings, "aois")
    return db.table(settings, "aois")


def _store(cur, settings, aois, name: str, geom_sql, params, replace: bool) -> None:
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE name = %s").format(aois), (name,))
    if cur.fetchone()[0]:
        if not replace:
            raise UserError(f"AOI {name!r} already exists in {settings.db.schema}.{settings.tables.aois}; "
                            "pass --replace to overwrite it or choose another name")
        cur.execute(sql.SQL("DELETE FROM {} WHERE name = %s").format(aois), (name,))
    cur.execute(sql.SQL("INSERT INTO {} (name, wkb_geometry) VALUES (%s, ({}))").format(aois, geom_sql),
                (name, *params))


def add_from_parcels(conn, settings, name: str, table: str, replace: bool = False) -> str:
    """Store the lon/lat extent of the parcels in `table` as AOI `name`; returns a description."""
    check_aoi_name(name)
    aois = _aois(conn, settings)
    tname, target = parcel_table(settings, table)
    with conn.cursor() as cur:
        if not db.table_exists(conn, settings, tname):
            raise UserError(f"parcel table {settings.db.schema}.{tname} does not exist; "
                            "load it with cbm parcels load FILE --table " + tname)
        cur.execute("SELECT srid FROM geometry_columns WHERE f_table_schema = %s AND f_table_name = %s"
                    " AND f_geometry_column = 'wkb_geometry'", (settings.db.schema, tname))
        row = cur.fetchone()
        if row is None:
            raise UserError(f"table {settings.db.schema}.{tname} has no wkb_geometry column; "
                            "load parcels with cbm parcels load")
        srid = row[0]
        if not srid:
            raise UserError(f"table {settings.db.schema}.{tname}: wkb_geometry has no SRID; "
                            "reload it with cbm parcels load")
        cur.execute(sql.SQL("SELECT count(*), ST_Extent(wkb_geometry)::geometry FROM {}").format(target))
        count, box = cur.fetchone()
        if not count or box is None:
            raise UserError(f"parcel table {settings.db.schema}.{tname} has no parcels; load some first")
        # The projected extent, its edges densified (64 pieces a side), transformed, boxed in lon/lat.
        geom_sql = sql.SQL(
            "SELECT ST_SetSRID(ST_Envelope(ST_Transform(ST_Segmentize(b, GREATEST(ST_XMax(b) - ST_XMin(b),"
            " ST_YMax(b) - ST_YMin(b)) / 64), 4326)), 4326)"
            " FROM (SELECT ST_SetSRID(ST_Extent(wkb_geometry)::geometry, {srid}) AS b FROM {t}) e"
        ).format(srid=sql.Literal(srid), t=target)
        cur.execute(sql.SQL("SELECT GeometryType(g) FROM ({}) x(g)").format(geom_sql))
        if cur.fetchone()[0] != "POLYGON":
            raise UserError(f"the parcels of {settings.db.schema}.{tname} have a degenerate extent "
                            "(a point or a line); use --geojson with a polygon instead")
        _store(cur, settings, aois, name, geom_sql, (), replace)
    return f"extent of {count} parcels in {settings.db.schema}.{tname} (EPSG:{srid})"


def read_geojson_polygons(path: str | Path) -> list[dict]:
    """The polygon geometries (GeoJSON dicts) of a Polygon/MultiPolygon/Feature/FeatureCollection file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"GeoJSON file {p} does not exist; check the path")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"GeoJSON file {p} cannot be read ({getattr(exc, 'strerror', None) or exc}); "
                        "give a GeoJSON file") from None
    except ValueError as exc:
        raise UserError(f"GeoJSON file {p} is not valid JSON ({exc}); fix it") from None
    if not isinstance(doc, dict):
        raise UserError(f"GeoJSON file {p} is not a GeoJSON object; give a Polygon, MultiPolygon, "
                        "Feature or FeatureCollection")
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name") if isinstance(doc.get("crs"), dict) else None
    if crs and not re.search(r"(CRS84|EPSG:+4326)$", str(crs)):
        raise UserError(f"GeoJSON file {p} is in {crs}; an AOI must be in EPSG:4326 (lon/lat), reproject it")
    kind = doc.get("type")
    if kind == "FeatureCollection":
        features = doc.get("features")
        if not isinstance(features, list) or not features:
            raise UserError(f"GeoJSON file {p} has no features; give at least one polygon")
        geoms = [f.get("geometry") if isinstance(f, dict) else None for f in features]
    elif kind == "Feature":
        geoms = [doc.get("geometry")]
    elif kind == "GeometryCollection":
        geoms = doc.get("geometries") or []
    else:
        geoms = [doc]
    out = []
    for i, g in enumerate(geoms, 1):
        gtype = g.get("type") if isinstance(g, dict) else None
        if gtype not in POLYGONAL:
            what = f"feature {i}" if len(geoms) > 1 else "its geometry"
            raise UserError(f"GeoJSON file {p}: {what} is {gtype or 'missing'}, not a Polygon or MultiPolygon; "
                            "an AOI must be polygons")
        out.append(g)
    if not out:
        raise UserError(f"GeoJSON file {p} has no polygons; give at least one")
    return out


def add_from_geojson(conn, settings, name: str, path: str | Path, replace: bool = False) -> str:
    """Store a GeoJSON polygon (or the convex hull of several) as AOI `name`; returns a description."""
    check_aoi_name(name)
    polygons = read_geojson_polygons(path)
    aois = _aois(conn, settings)
    single = len(polygons) == 1 and polygons[0]["type"] == "Polygon"
    texts = [json.dumps(g) for g in polygons]
    collect = sql.SQL("SELECT ST_Collect(ST_SetSRID(ST_GeomFromGeoJSON(j), 4326)) AS g FROM unnest(%s::text[]) AS j")
    with conn.cursor() as cur:
        def checked(query, what: str):
            """Run a query on the user's geometries; PostGIS/GEOS errors (bad GeoJSON, broken rings)
            become one line naming the file, and the transaction stays usable."""
            try:
                cur.execute("SAVEPOINT geojson")
                cur.execute(query, (texts,))
                row = cur.fetchone()
                cur.execute("RELEASE SAVEPOINT geojson")
                return row
            except psycopg2.Error as exc:  # reported as data or internal errors
                cur.execute("ROLLBACK TO SAVEPOINT geojson")
                raise UserError(f"GeoJSON file {path} has a geometry PostGIS cannot {what} "
                                f"({_first_line(exc)}); fix it") from None

        xmin, ymin, xmax, ymax, valid, empty = checked(sql.SQL(
            "SELECT ST_XMin(g), ST_YMin(g), ST_XMax(g), ST_YMax(g), ST_IsValid(ST_GeometryN(g, 1)), ST_IsEmpty(g)"
            " FROM ({}) c").format(collect), "read")
        if empty:
            raise UserError(f"GeoJSON file {path} has only empty polygons; give a polygon with coordinates")
        if xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90:
            raise UserError(f"GeoJSON file {path} has coordinates outside lon/lat range; "
                            "an AOI must be in EPSG:4326, reproject it")
        if single and valid:
            geom_sql, how = sql.SQL("SELECT ST_GeometryN(g, 1) FROM ({}) c").format(collect), "polygon"
        else:
            geom_sql = sql.SQL("SELECT ST_ConvexHull(g) FROM ({}) c").format(collect)
            how = (f"convex hull of {len(polygons)} geometries" if len(polygons) > 1 else
                   "convex hull of a MultiPolygon" if not single else "convex hull of an invalid polygon")
        if checked(sql.SQL("SELECT GeometryType(g) FROM ({}) x(g)").format(geom_sql), "use")[0] != "POLYGON":
            raise UserError(f"GeoJSON file {path} has no area (its polygons are degenerate); fix it")
        _store(cur, settings, aois, name, geom_sql, (texts,), replace)
    return f"{how} from {Path(path).name}"


def list_aois(conn, settings) -> list[tuple]:
    """(name, xmin, ymin, xmax, ymax, area_km2) for every AOI, by name."""
    aois = _aois(conn, settings)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT name, ST_XMin(wkb_geometry), ST_YMin(wkb_geometry), ST_XMax(wkb_geometry),"
                            " ST_YMax(wkb_geometry), ST_Area(wkb_geometry::geography) / 1e6 FROM {}"
                            " ORDER BY name").format(aois))
        return cur.fetchall()


def add(settings, name: str, *, from_parcels: str | None = None, geojson: str | None = None,
        replace: bool = False, dry_run: bool = False) -> tuple[str, tuple]:
    """Add AOI `name` from the extent of the parcel table `from_parcels` or from the GeoJSON file
    `geojson`, in one transaction (rolled back with dry_run). Returns how it was made and the
    AOI's row of list_aois (name, bounds, area)."""
    check_aoi_name(name)
    if geojson:
        read_geojson_polygons(geojson)    # a bad file fails before we connect
    try:
        with db.session(settings) as conn:
            if from_parcels:
                how = add_from_parcels(conn, settings, name, from_parcels, replace)
            else:
                how = add_from_geojson(conn, settings, name, geojson, replace)
            row = next(r for r in list_aois(conn, settings) if r[0] == name)
            if dry_run:
                conn.rollback()
    except psycopg2.Error as exc:
        raise CbmError(f"adding AOI {name} failed ({_first_line(exc)}); nothing was written") from None
    return how, row


def _first_line(exc: Exception) -> str:
    """The first line of a database error (PostgreSQL adds details and hints below it)."""
    return one_line(str(exc).split("\n")[0])
