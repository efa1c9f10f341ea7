"""The CbM database schema: `cbm db init` (idempotent, safe to re-run on a live database).

Tables keep the seed's names, columns and types so existing CbM tools keep reading them:
  aois(name, wkb_geometry Polygon 4326)
  dias_catalogue(id, obstime, reference, sensor, card, status, footprint)
  sigs(pid, obsid, band, count, mean, std, min, max, p25, p50, p75)
  hists(pid, obsid, hist json)
Differences from the seed (all but the layout additive):
  * sigs and hists are partitioned by obsid range, indexed on (pid, obsid) instead of the seed's
    (pid), (obsid), (band) (extractor/partitions.py; a seed database is upgraded in place).
  * dias_catalogue.footprint is MultiPolygon (real S1 replies have MultiPolygons); a seed
    database with a Polygon column is converted in place (ST_Multi).
  * dias_catalogue.card is varchar(3) (the seed's char(2) cannot hold 'c12'; a seed database
    is converted in place, values read the same).
  * dias_catalogue gains product_path (the /eodata path from the catalog), tile, epsg
    (the scene's UTM EPSG for S2), processing_baseline, synced_at.
  * extraction_runs tracks every extraction run of a scene per resolution (-1 = SCL histograms,
    10, 20), with claim owner, lease, attempts and the full error text, so the runs of one card
    never reset each other's statuses (see extractor/extract/claims.py).
"""

from __future__ import annotations

from psycopg2 import sql

from extractor import grants, partitions
from extractor import orders
from extractor import schedule
from extractor.db import table
from extractor.settings import Settings

STATUS_LENGTH = 24  # varchar(24) as in the seed; every status we write must fit (tested)


def statements(settings: Settings) -> list[sql.Composable]:
    t = {key: table(settings, key) for key in ("aois", "catalogue", "sigs", "hists")}
    runs = table(settings, "extraction_runs")
    names = vars(settings.tables)
    ix = lambda suffix, base="catalogue": sql.Identifier(f"{names[base]}_{suffix}")  # noqa: E731
    return [
        sql.SQL("CREATE EXTENSION IF NOT EXISTS postgis"),
        sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text, wkb_geometry geometry(Polygon, 4326))").format(t["aois"]),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " id serial PRIMARY KEY,"
            " obstime timestamp without time zone NOT NULL,"
            " reference character varying(120) NOT NULL,"
            " sensor character(2) NOT NULL,"
            " card character varying(3) NOT NULL,"
            " status character varying({}) DEFAULT 'ingested' NOT NULL,"
            " footprint geometry(MultiPolygon, 4326))"
        ).format(t["catalogue"], sql.Literal(STATUS_LENGTH)),
        # A seed database: widen Polygon footprints to MultiPolygon, keep everything else.
        sql.SQL(
            "DO $$ BEGIN IF (SELECT type FROM geometry_columns WHERE f_table_schema = {s}"
            " AND f_table_name = {n} AND f_geometry_column = 'footprint') = 'POLYGON' THEN"
            " ALTER TABLE {t} ALTER COLUMN footprint TYPE geometry(MultiPolygon, 4326) USING ST_Multi(footprint);"
            " END IF; END $$"
        ).format(s=sql.Literal(settings.db.schema), n=sql.Literal(names["catalogue"]), t=t["catalogue"]),
        # A seed database: card char(2) cannot hold 'c12'; varchar(3) reads the same for the others.
        sql.SQL(
            "DO $$ BEGIN IF (SELECT data_type FROM information_schema.columns WHERE table_schema = {s}"
            " AND table_name = {n} AND column_name = 'card') = 'character' THEN"
            " ALTER TABLE {t} ALTER COLUMN card TYPE character varying(3); END IF; END $$"
        ).format(s=sql.Literal(settings.db.schema), n=sql.Literal(names["catalogue"]), t=t["catalogue"]),
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS product_path text,"
                " ADD COLUMN IF NOT EXISTS tile text,"
                " ADD COLUMN IF NOT EXISTS epsg integer,"
                " ADD COLUMN IF NOT EXISTS processing_baseline real,"
                " ADD COLUMN IF NOT EXISTS synced_at timestamptz DEFAULT now()").format(t["catalogue"]),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING gist (footprint)").format(ix("footprint_idx"), t["catalogue"]),
        sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} USING btree (reference)").format(ix("reference_idx"), t["catalogue"]),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (card, status, obstime)").format(ix("card_status_idx"), t["catalogue"]),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {runs} ("
            " obsid integer NOT NULL REFERENCES {cat} (id) ON DELETE CASCADE,"
            " res smallint NOT NULL,"
            " status character varying({n}) NOT NULL DEFAULT 'ingested',"
            " owner text, claimed_at timestamptz, lease_until timestamptz,"
            " attempts integer NOT NULL DEFAULT 0,"
            " detail text, rows integer, finished_at timestamptz,"
            " PRIMARY KEY (obsid, res))"
        ).format(runs=runs, cat=t["catalogue"], n=sql.Literal(STATUS_LENGTH)),
        # scenes given back because the storage did not answer (never final, never an attempt)
        sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS storage_faults integer NOT NULL DEFAULT 0").format(runs),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (res, status)").format(
            sql.Identifier("extraction_runs_res_status_idx"), runs),
        # The rasterized parcels, shared by all workers (extractor/extract/rasterize.py).
        *grid_store_statements(settings),
    ]


def grid_store_statements(settings: Settings) -> list[sql.Composable]:
    """extract_grids: one row per (parcel table, CRS, pixel grid); extract_grid_blocks: the pixel
    runs of its parcels, one compressed bytea per block of the grid."""
    grids, blocks = table(settings, "extract_grids"), table(settings, "extract_grid_blocks")
    return [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " id serial PRIMARY KEY, parcels text NOT NULL, crs text NOT NULL,"
            " res_x double precision NOT NULL, res_y double precision NOT NULL,"
            " phase_x double precision NOT NULL, phase_y double precision NOT NULL,"
            " block integer NOT NULL, source_oid bigint NOT NULL, source_rows bigint NOT NULL,"
            " parcels_n integer NOT NULL, runs_n bigint NOT NULL, built_at timestamptz DEFAULT now(),"
            " UNIQUE (parcels, crs, res_x, res_y, phase_x, phase_y))").format(grids),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} ("
            " grid_id integer NOT NULL REFERENCES {} (id) ON DELETE CASCADE,"
            " brow integer NOT NULL, bcol integer NOT NULL, runs_n integer NOT NULL, data bytea NOT NULL,"
            " PRIMARY KEY (grid_id, brow, bcol))").format(blocks, grids),
    ]


def init_schema(conn, settings: Settings) -> None:
    """Create or update every table and index; one transaction, so a failure changes nothing."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(settings.db.schema)))
        for stmt in statements(settings):
            cur.execute(stmt)
        # sigs and hists: partitioned by obsid (extractor/partitions.py); tables of the seed's layout
        # are left as they are here and upgraded by `cbm db init` (partitions.upgrade)
        for key in partitions.KEYS:
            if partitions.relkind(cur, settings, partitions.base(settings, key)) != "r":
                partitions.create_parent(cur, settings, key)
        partitions.ensure_partitions(cur, settings)
        orders.create_table(cur, settings)  # s1_orders: CARD orders (extractor/orders.py)
        schedule.create_tables(cur, settings)  # the continuous mode's schedule and runs (extractor/schedule)
        grants.apply(cur, settings)  # the workers' role and its privileges (extractor/grants.py)
