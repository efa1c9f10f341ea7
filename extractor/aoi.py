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
import sys
from pathlib import Path

from cbm.cli import add_command, add_group
from extractor.errors import CbmError, UserError

NAME = re.compile(r"^[a-z_][a-z0-9_]{0,47}$")
POLYGONAL = ("Polygon", "MultiPolygon")


def check_aoi_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise UserError(f"AOI name {name!r} is not valid; use lower-case letters, digits and _ (max 48): "
                        "it becomes part of table names such as <aoi>32632_10_rast")
    return name


def _aois(conn, settings):
    from extractor import db
    from extractor.parcels import require_table

    require_table(conn, settings, "aois")
    return db.table(settings, "aois")


def _store(cur, settings, aois, name: str, geom_sql, params, replace: bool) -> None:
    from psycopg2 import sql

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
    from psycopg2 import sql

    from extractor import db
    from extractor.parcels import parcel_table

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
    import psycopg2
    from psycopg2 import sql

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
                reason = " ".join(str(exc).split("\n")[0].split())
                raise UserError(f"GeoJSON file {path} has a geometry PostGIS cannot {what} ({reason}); fix it") from None

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
    from psycopg2 import sql

    aois = _aois(conn, settings)
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT name, ST_XMin(wkb_geometry), ST_YMin(wkb_geometry), ST_XMax(wkb_geometry),"
                            " ST_YMax(wkb_geometry), ST_Area(wkb_geometry::geography) / 1e6 FROM {}"
                            " ORDER BY name").format(aois))
        return cur.fetchall()


def _summary(conn, settings, name: str) -> str:
    for row in list_aois(conn, settings):
        if row[0] == name:
            _, xmin, ymin, xmax, ymax, km2 = row
            return f"lon {xmin:.5f}..{xmax:.5f}, lat {ymin:.5f}..{ymax:.5f}, {km2:,.1f} km2"
    return ""


# -- commands ---------------------------------------------------------------------------------
def cmd_add(args) -> int:
    import psycopg2

    from extractor import db
    from extractor.cli import load_settings

    settings = load_settings(args)
    check_aoi_name(args.name)
    if args.geojson:
        read_geojson_polygons(args.geojson)    # a bad file fails before we connect
    try:
        with db.session(settings) as conn:
            if args.from_parcels:
                how = add_from_parcels(conn, settings, args.name, args.from_parcels, args.replace)
            else:
                how = add_from_geojson(conn, settings, args.name, args.geojson, args.replace)
            summary = _summary(conn, settings, args.name)
            if args.dry_run:
                conn.rollback()
                print("dry run: nothing was written; the AOI would be:")
    except psycopg2.Error as exc:
        reason = " ".join(str(exc).split("\n")[0].split())
        raise CbmError(f"adding AOI {args.name} failed ({reason}); nothing was written") from None
    print(f"AOI {args.name}: {how}; {summary}")
    return 0


def cmd_list(args) -> int:
    from extractor import db
    from extractor.cli import load_settings

    settings = load_settings(args)
    with db.session(settings) as conn:
        rows = list_aois(conn, settings)
    if not rows:
        print("no AOIs yet; add one with cbm aoi add NAME --from-parcels TABLE (or --geojson FILE)", file=sys.stderr)
        return 0
    width = max(4, *(len(r[0] or "") for r in rows))
    print(f"{'name':<{width}}  {'lon min':>11} {'lat min':>10} {'lon max':>11} {'lat max':>10} {'km2':>12}")
    for name, xmin, ymin, xmax, ymax, km2 in rows:
        if xmin is None:
            print(f"{name or '':<{width}}  (no geometry)")
            continue
        print(f"{name or '':<{width}}  {xmin:>11.5f} {ymin:>10.5f} {xmax:>11.5f} {ymax:>10.5f} {km2:>12,.1f}")
    return 0


def register(sub) -> None:
    """Add the `cbm aoi` commands."""
    group = add_group(sub, "aoi", "areas of interest (the aois table): add, list")
    add = add_command(
        group, "add", cmd_add, "add an AOI from the extent of a parcel table or from a GeoJSON file",
        epilog="--from-parcels: the extent of the parcels as a lon/lat (EPSG:4326) rectangle that contains "
               "every parcel (the projected extent's edges are densified before transforming). "
               "--geojson: a Polygon, MultiPolygon, Feature or FeatureCollection in EPSG:4326; one Polygon is "
               "stored as it is, a MultiPolygon or several features become the convex hull of all polygons.")
    add.add_argument("name", metavar="NAME", help="the AOI name (lower-case letters, digits, _)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-parcels", metavar="TABLE", help="a parcel table loaded with cbm parcels load")
    source.add_argument("--geojson", metavar="FILE", help="a GeoJSON polygon file in EPSG:4326")
    add.add_argument("--replace", action="store_true", help="overwrite an existing AOI of that name")
    add.add_argument("--dry-run", action="store_true", help="compute and show the AOI, write nothing")
    add_command(group, "list", cmd_list, "list the AOIs with their lon/lat bounds and area")
