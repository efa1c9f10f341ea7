"""`cbm parcels load` and `cbm parcels zones`: parcel tables as ogr2ogr would make them, and the
UTM zones the extraction needs over an AOI.

A parcel table has the attributes of the source file (names laundered as ogr2ogr does: lower
case, anything but letters, digits and _ replaced by _), an integer primary key `ogc_fid` and
`wkb_geometry geometry(MultiPolygon, <source EPSG>)` with a GiST index, so the seed's SQL keeps
working. Loading is one transaction: the file is streamed with COPY into a temporary staging
table, classified and repaired there (ST_MakeValid, polygonal parts kept), and only then the
table is created (or replaced with --replace). Any failure leaves the database as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import psycopg2
from psycopg2 import sql

from extractor import db
from extractor.errors import CbmError, UserError, one_line
from extractor.settings import check_identifier

CARDS = ("s2", "bs", "c6", "c12")
INT32_MAX = 2**31 - 1
IDENT_BYTES = 63


# -- names ----------------------------------------------------------------------------------
def parcel_table(settings, name: str):
    """(name, quoted schema.table) for a parcel table given on the command line.

    Names are lower-cased as ogr2ogr does, so unquoted SQL (the seed's) finds them; the CbM
    tables themselves (aois, dias_catalogue, ...) are refused."""
    check_identifier(name, "parcel table")
    name = name.lower()
    own = set(vars(settings.tables).values()) | {"extraction_runs", "spatial_ref_sys"}
    if name in own:
        raise UserError(f"parcel table {name!r} is one of CbM's own tables; choose another --table name")
    return name, sql.SQL("{}.{}").format(sql.Identifier(settings.db.schema), sql.Identifier(name))


def launder(names: list[str]) -> list[str]:
    """Column names as ogr2ogr's PostgreSQL driver makes them, made unique and kept off our own."""
    taken = {"ogc_fid", "wkb_geometry"}
    out = []
    for i, raw in enumerate(names, 1):
        base = re.sub(r"\W", "_", str(raw).strip().lower()) or f"field_{i}"
        base = base.encode()[:IDENT_BYTES].decode(errors="ignore")
        name, k = base, 1
        while name in taken:
            k += 1
            suffix = f"_{k}"
            name = base.encode()[: IDENT_BYTES - len(suffix)].decode(errors="ignore") + suffix
        taken.add(name)
        out.append(name)
    return out


# -- loading ----------------------------------------------------------------------------------
@dataclass
class LoadResult:
    table: str
    srid: int
    loaded: int
    repaired: int
    skipped: dict[str, list[int]] = field(default_factory=dict)   # reason -> feature ids
    extent: tuple[float, float, float, float] | None = None
    replaced: bool = False
    columns: int = 0

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    def skipped_text(self, limit: int = 5) -> str:
        parts = []
        for reason, ids in sorted(self.skipped.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(str(i) for i in ids[:limit]) + (", ..." if len(ids) > limit else "")
            parts.append(f"{len(ids)} {reason} (feature{'s' if len(ids) > 1 else ''} {shown})")
        return "; ".join(parts)


def require_postgis(cur, settings) -> None:
    cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'postgis'")
    if cur.fetchone() is None:
        raise UserError(f"the database {db.describe(settings)} has no PostGIS yet; run cbm db init first")


# A polygonal geometry as the table stores it: curves linearised, polygonal parts of a collection, 2D.
NORMALISE = """ST_Force2D(CASE WHEN GeometryType("#g") IN ('POLYGON', 'MULTIPOLYGON') THEN "#g"
                        ELSE ST_CollectionExtract(ST_CurveToLine("#g"), 3) END)"""


def _exceptions_sql(stage, cls):
    """The features that are skipped (with why) or repaired (with the repaired geometry); the rest
    go into the table as they are, so their geometries are written only once."""
    return sql.SQL("""
CREATE TEMP TABLE {cls} ON COMMIT DROP AS
SELECT "#n", skip, invalid AS repaired, CASE WHEN invalid THEN ST_CollectionExtract(ST_MakeValid(g), 3) END AS g
FROM (
  SELECT "#n", skip, g, (skip IS NULL AND NOT ST_IsValid(g)) AS invalid
  FROM (
    SELECT "#n",
      CASE WHEN "#g" IS NULL THEN 'without geometry'
           WHEN ST_IsEmpty("#g") THEN 'with an empty geometry'
           WHEN ST_Dimension("#g") <> 2 THEN 'not a polygon: ' || GeometryType("#g")
      END AS skip,
      CASE WHEN ST_Dimension("#g") = 2 AND NOT ST_IsEmpty("#g") THEN {normalise} END AS g
    FROM {stage}) a
) b
WHERE skip IS NOT NULL OR invalid""").format(stage=stage, cls=cls, normalise=sql.SQL(NORMALISE))


def load_parcels(settings, source, table: str, replace: bool = False, progress=None,
                 dry_run: bool = False) -> LoadResult:
    """Load a ParcelSource into `table` in one transaction; returns what was loaded and skipped.

    With dry_run everything is done and then rolled back: the result says what a load would do."""
    try:
        return _load(settings, source, table, replace, progress, dry_run)
    except psycopg2.Error as exc:
        reason = one_line(str(exc).split("\n")[0])
        raise CbmError(f"loading {source.path} into table {table} failed ({reason}); nothing was loaded") from None


def _load(settings, source, table: str, replace: bool, progress, dry_run: bool) -> LoadResult:
    from extractor import parcel_copy  # lazy: pyarrow (~0.1 s) is imported only when a file is loaded

    name, target = parcel_table(settings, table)
    stage, cls = sql.Identifier("cbm_parcels_stage"), sql.Identifier("cbm_parcels_cls")
    with db.session(settings) as conn, conn.cursor() as cur:
        require_postgis(cur, settings)
        cur.execute("SELECT 1 FROM spatial_ref_sys WHERE srid = %s", (source.srid,))
        if cur.fetchone() is None:
            raise UserError(f"EPSG:{source.srid} of {source.describe} is not in PostGIS' spatial_ref_sys; "
                            "reproject the file to a known CRS")
        # Two loads into the same table queue up here, so the second sees the first's table.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"cbm parcels {settings.db.schema}.{name}",))
        exists = db.table_exists(conn, settings, name)
        if exists and not replace:
            raise UserError(f"table {settings.db.schema}.{name} already exists; pass --replace to overwrite it "
                            "or choose another --table")

        columns: list[tuple[str, str, str]] = []   # (source name, column, pg type)
        staged = 0
        copy_stmt = None
        for batch in source.batches():
            if copy_stmt is None:
                attrs = parcel_copy.attributes(batch.schema)
                names = launder([f.name for f in attrs])
                columns = [(f.name, col, parcel_copy.pg_type(f.type)) for f, col in zip(attrs, names)]
                cur.execute(sql.SQL('CREATE TEMP TABLE {} ("#n" integer, "#fid" bigint, {} "#g" geometry) ON COMMIT DROP').format(
                    stage, sql.SQL("").join(sql.SQL("{} {}, ").format(sql.Identifier(c), sql.SQL(t))
                                            for _, c, t in columns)))
                copy_stmt = sql.SQL("COPY {} FROM STDIN WITH (FORMAT csv)").format(stage).as_string(conn)
            rows = parcel_copy.csv_rows(batch, staged + 1, source.fid_column, [src for src, _, _ in columns])
            try:
                cur.copy_expert(copy_stmt, rows, size=1 << 20)
            except psycopg2.DataError as exc:
                reason = one_line(str(exc).split("\n")[0])
                raise UserError(f"parcel file {source.path} has data PostgreSQL cannot take ({reason}); "
                                "check or re-export the file") from None
            staged += batch.num_rows
            if progress:
                progress(staged)
        if staged == 0:
            raise UserError(f"parcel file {source.path} has no features (0 parcels); give a file with parcels")

        # Source ids (GeoPackage fid) as ogc_fid when they fit an integer; positions otherwise.
        cur.execute(sql.SQL('SELECT min("#fid"), max("#fid") FROM {}').format(stage))
        lo, hi = cur.fetchone()
        if lo < 1 or hi > INT32_MAX:
            cur.execute(sql.SQL('UPDATE {} SET "#fid" = "#n"').format(stage))

        cur.execute(_exceptions_sql(stage, cls))
        cur.execute(sql.SQL("UPDATE {} SET skip = 'invalid, nothing polygonal left after ST_MakeValid'"
                            " WHERE repaired AND ST_IsEmpty(g)").format(cls))
        cur.execute(sql.SQL('SELECT c.skip, s."#fid" FROM {} c JOIN {} s USING ("#n") WHERE c.skip IS NOT NULL ORDER BY 2')
                    .format(cls, stage))
        skipped: dict[str, list[int]] = {}
        for reason, fid in cur.fetchall():
            skipped.setdefault(reason, []).append(fid)
        cur.execute(sql.SQL("SELECT count(*) FILTER (WHERE skip IS NULL AND repaired) FROM {}").format(cls))
        repaired = cur.fetchone()[0]
        loaded = staged - sum(len(ids) for ids in skipped.values())
        result = LoadResult(table=f"{settings.db.schema}.{name}", srid=source.srid, loaded=loaded,
                            repaired=repaired, skipped=skipped, replaced=exists, columns=len(columns))
        if loaded == 0:
            raise UserError(f"parcel file {source.path} has no polygon features ({staged} skipped: "
                            f"{result.skipped_text(3)}); give a file of parcel polygons")

        if exists:
            try:
                cur.execute(sql.SQL("DROP TABLE {}").format(target))
            except psycopg2.errors.DependentObjectsStillExist:
                raise UserError(f"table {result.table} cannot be replaced: other objects (views) depend on it; "
                                "drop them first") from None
        col_defs = sql.SQL("").join(sql.SQL(", {} {}").format(sql.Identifier(c), sql.SQL(t)) for _, c, t in columns)
        cur.execute(sql.SQL("CREATE TABLE {} (ogc_fid serial PRIMARY KEY{}, wkb_geometry geometry(MultiPolygon, {}))")
                    .format(target, col_defs, sql.Literal(source.srid)))
        col_names = sql.SQL("").join(sql.SQL(", {}").format(sql.Identifier(c)) for _, c, _ in columns)
        src_names = sql.SQL("").join(sql.SQL(", s.{}").format(sql.Identifier(c)) for _, c, _ in columns)
        cur.execute(sql.SQL('INSERT INTO {} (ogc_fid{}, wkb_geometry)'
                            ' SELECT s."#fid"{}, ST_SetSRID(ST_Multi(COALESCE(c.g, {})), {})'
                            ' FROM {} s LEFT JOIN {} c USING ("#n") WHERE c.skip IS NULL')
                    .format(target, col_names, src_names, sql.SQL(NORMALISE.replace('"#g"', 's."#g"')),
                            sql.Literal(source.srid), stage, cls))
        cur.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'ogc_fid'), (SELECT max(ogc_fid) FROM {}))")
                    .format(target), (f'"{settings.db.schema}"."{name}"',))
        index = sql.Identifier(f"{name}_wkb_geometry_geom_idx"[:IDENT_BYTES])
        cur.execute(sql.SQL("CREATE INDEX {} ON {} USING gist (wkb_geometry)").format(index, target))
        cur.execute(sql.SQL("SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e)"
                            " FROM (SELECT ST_Extent(wkb_geometry) AS e FROM {}) x").format(target))
        result.extent = cur.fetchone()
        if dry_run:
            conn.rollback()
        else:
            cur.execute(sql.SQL("ANALYZE {}").format(target))
    return result


# -- UTM zones --------------------------------------------------------------------------------
# The zone of an S2 scene: its EPSG column when the sync filled it, otherwise from the MGRS tile
# in the name (6th field, e.g. T31UFS: zone 31, latitude band U; bands C..M are south).
ZONE_SQL = """
SELECT zone, count(*) FROM (
  SELECT COALESCE(c.epsg,
    CASE WHEN split_part(c.reference, '_', 6) ~ '^T[0-9]{{2}}[C-HJ-NP-X][A-Z]{{2}}$' THEN
      CASE WHEN substr(split_part(c.reference, '_', 6), 4, 1) < 'N' THEN 32700 ELSE 32600 END
      + substr(split_part(c.reference, '_', 6), 2, 2)::int END) AS zone
  FROM {cat} c
  WHERE c.card = %(card)s
    AND EXISTS (SELECT 1 FROM {aois} a WHERE a.name = %(aoi)s
                AND c.footprint && a.wkb_geometry AND ST_Intersects(c.footprint, a.wkb_geometry))
) z GROUP BY zone ORDER BY zone NULLS LAST
"""


@dataclass
class Zones:
    epsg: list[int]
    scenes: int
    unknown: int      # scenes whose zone could not be told (no epsg, no tile in the name)


def require_table(conn, settings, key: str) -> None:
    name = getattr(settings.tables, key)
    if not db.table_exists(conn, settings, name):
        raise UserError(f"table {settings.db.schema}.{name} does not exist in {db.describe(settings)}; "
                        "run cbm db init first")


def require_aoi(conn, settings, aoi: str) -> None:
    require_table(conn, settings, "aois")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT 1 FROM {} WHERE name = %s").format(db.table(settings, "aois")), (aoi,))
        if cur.fetchone() is None:
            raise UserError(f"AOI {aoi!r} not found in {settings.db.schema}.{settings.tables.aois}; "
                            "list them with cbm aoi list, add it with cbm aoi add")


def zone_counts(conn, settings, aoi: str, card: str = "s2") -> Zones:
    if card not in CARDS:
        raise UserError(f"unknown card {card!r}; use one of {', '.join(CARDS)}")
    require_aoi(conn, settings, aoi)
    require_table(conn, settings, "catalogue")
    query = sql.SQL(ZONE_SQL).format(cat=db.table(settings, "catalogue"), aois=db.table(settings, "aois"))
    with conn.cursor() as cur:
        cur.execute(query, {"card": card, "aoi": aoi})
        rows = cur.fetchall()
    return Zones(epsg=[z for z, _ in rows if z is not None], scenes=sum(n for _, n in rows),
                 unknown=sum(n for z, n in rows if z is None))


def utm_zones(settings, aoi: str, card: str = "s2") -> list[int]:
    """EPSG codes (326zz north, 327zz south) of the `card` scenes in the catalog over `aoi`."""
    with db.session(settings) as conn:
        return zone_counts(conn, settings, aoi, card).epsg
