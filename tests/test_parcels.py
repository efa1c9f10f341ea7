"""`cbm parcels load` / `cbm parcels zones` on a real PostGIS with the real DK and NL parcel samples."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import assert_one_line_error, run_cbm
from parcel_samples import (BOWTIE, DK_SHP, EMPTY, NL_GPKG, POINT, dk_geojson, dk_geopackage, dk_without_prj,
                            feature_collection, init_schema, nl_geoparquet, snapshot)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parcels")
    return {
        "dk_bad": dk_geojson(folder, [BOWTIE, POINT, EMPTY, None], "dk_bad.geojson"),
        "nl_parquet": nl_geoparquet(folder),
        "dk_gpkg": dk_geopackage(folder),
        "noprj": dk_without_prj(folder),
        "empty": feature_collection(folder, "empty.geojson", []),
        "points": feature_collection(folder, "points.geojson", [POINT, POINT]),
        "garbage": _write(folder / "garbage.gpkg", b"this is not a geopackage\n" * 20),
        "mixed": feature_collection(folder, "mixed.geojson", [POINT, EMPTY, None, LINE]),
        "plain_parquet": _plain_parquet(folder / "plain.parquet"),
        "custom_crs": _dk_rewritten(folder / "custom.gpkg", crs="+proj=tmerc +lon_0=10.3 +k=1 +x_0=0 +y_0=0 +ellps=GRS80"),
        "two_layers": _dk_rewritten(folder / "two.gpkg", layers=("marker", "marker_copy")),
        "folder": folder,
    }


LINE = {"type": "LineString", "coordinates": [[500000, 6200000], [500100, 6200100]]}


def _plain_parquet(path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2], "wkb": [b"\x01", b"\x02"]}), path)
    return path


def _dk_rewritten(path, crs=None, layers=("marker",)):
    import pyogrio.raw

    meta, _, geometry, field_data = pyogrio.raw.read(DK_SHP)
    for layer in layers:
        pyogrio.raw.write(path, geometry, field_data, meta["fields"], crs=crs or meta["crs"], driver="GPKG",
                          geometry_type="Polygon", layer=layer, append=layer != layers[0])
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.fixture
def db(dbenv):
    """A database after `cbm db init` (run in-process: the command itself is tested in test_db.py)."""
    init_schema()
    return dbenv


def load(db, path, table, *extra):
    return run_cbm("parcels", "load", str(path), "--table", table, *extra, env=db)


def geometry_column(db, table):
    return db.query("SELECT type, srid FROM geometry_columns WHERE f_table_name = %s"
                    " AND f_geometry_column = 'wkb_geometry'", (table,))


def test_load_dk_shapefile_like_ogr2ogr(db):
    proc = load(db, DK_SHP, "dk_parcels")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "loaded 100 parcels" in out and "repaired 0" in out and "skipped 0" in out
    assert "SRID 25832" in out and "extent 470534.1 6106184.1 680621.6 6379276.8" in out
    assert geometry_column(db, "dk_parcels") == [("MULTIPOLYGON", 25832)]
    cols = dict(db.query("SELECT column_name, data_type FROM information_schema.columns"
                         " WHERE table_name = 'dk_parcels' ORDER BY ordinal_position"))
    assert list(cols)[:3] == ["ogc_fid", "marknr", "imk_areal"] and list(cols)[-1] == "wkb_geometry"
    assert cols["ogc_fid"] == "integer" and cols["imk_areal"] == "double precision" and cols["ansplante"] == "integer"
    assert db.query("SELECT count(*), min(ogc_fid), max(ogc_fid), bool_and(ST_IsValid(wkb_geometry))"
                    " FROM dk_parcels") == [(100, 1, 100, True)]
    assert db.query("SELECT indexdef ~ 'gist' FROM pg_indexes WHERE tablename = 'dk_parcels'"
                    " AND indexdef ~ 'wkb_geometry'") == [(True,)]
    assert db.query("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
                    " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'dk_parcels'::regclass AND i.indisprimary"
                    ) == [("ogc_fid",)]
    # The seed's AOI query runs on it as written.
    db.query("INSERT INTO aois VALUES ('dk', (SELECT ST_Transform(ST_SetSRID(ST_Extent(wkb_geometry),"
             " (SELECT Find_SRID('public', 'dk_parcels', 'wkb_geometry'))), 4326) FROM dk_parcels))")
    assert db.query("SELECT GeometryType(wkb_geometry) FROM aois") == [("POLYGON",)]

    ogr2ogr = shutil.which("ogr2ogr")
    if ogr2ogr is None:
        pytest.skip("ogr2ogr (gdal-bin) not installed: cannot compare with it")
    subprocess.run([ogr2ogr, "-f", "PostgreSQL", "PG:", str(DK_SHP), "-nln", "dk_ogr", "-nlt", "MULTIPOLYGON"],
                   env={**db, "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    ours = [r[0] for r in db.query("SELECT column_name FROM information_schema.columns"
                                   " WHERE table_name = 'dk_parcels' ORDER BY ordinal_position")]
    theirs = [r[0] for r in db.query("SELECT column_name FROM information_schema.columns"
                                     " WHERE table_name = 'dk_ogr' ORDER BY ordinal_position")]
    assert ours == theirs
    assert geometry_column(db, "dk_ogr") == geometry_column(db, "dk_parcels")
    differ = db.query("SELECT count(*) FROM dk_parcels p JOIN dk_ogr o USING (ogc_fid)"
                      " WHERE NOT ST_Equals(p.wkb_geometry, o.wkb_geometry) OR p.marknr IS DISTINCT FROM o.marknr"
                      " OR p.imk_areal::numeric IS DISTINCT FROM o.imk_areal::numeric")
    assert differ == [(0,)] and db.query("SELECT count(*) FROM dk_ogr") == [(100,)]


def test_load_nl_geopackage_keeps_fid_and_matches_geoparquet(db, files):
    proc = load(db, NL_GPKG, "nl_gpkg")
    assert proc.returncode == 0, proc.stderr
    assert "loaded 100 parcels" in proc.stdout and "SRID 28992" in proc.stdout
    assert geometry_column(db, "nl_gpkg") == [("MULTIPOLYGON", 28992)]
    # ogc_fid is the GeoPackage fid (its `id` column), so parcel ids match the source.
    assert db.query("SELECT count(*) FROM nl_gpkg WHERE ogc_fid <> id") == [(0,)]
    from pyogrio.raw import read

    _, fids, _, fields = read(NL_GPKG, return_fids=True)
    assert sorted(int(f) for f in fids) == [r[0] for r in db.query("SELECT ogc_fid FROM nl_gpkg ORDER BY 1")]

    proc = load(db, files["nl_parquet"], "nl_parquet")
    assert proc.returncode == 0, proc.stderr
    assert "loaded 100 parcels" in proc.stdout and "SRID 28992" in proc.stdout
    assert geometry_column(db, "nl_parquet") == [("MULTIPOLYGON", 28992)]
    same = db.query("SELECT count(*) FROM nl_gpkg g JOIN nl_parquet p ON p.id = g.id"
                    " WHERE ST_Equals(g.wkb_geometry, p.wkb_geometry) AND g.gewas = p.gewas"
                    " AND g.gewascode = p.gewascode")
    assert same == [(100,)]


def test_geojson_invalid_repaired_and_bad_features_skipped(db, files):
    proc = load(db, files["dk_bad"], "dk_json")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "loaded 101 parcels" in out, out
    assert "repaired 1 invalid geometry" in out, out
    assert "skipped 3" in out and "POINT (feature 102)" in out and "empty geometry (feature 103)" in out \
        and "without geometry (feature 104)" in out, out
    # The bow-tie became two triangles, both kept, valid.
    assert db.query("SELECT ST_NumGeometries(wkb_geometry), ST_IsValid(wkb_geometry), ST_Area(wkb_geometry)"
                    " FROM dk_json WHERE ogc_fid = 101") == [(2, True, 5000.0)]
    assert db.query("SELECT count(*), bool_and(ST_IsValid(wkb_geometry)) FROM dk_json") == [(101, True)]
    assert geometry_column(db, "dk_json") == [("MULTIPOLYGON", 25832)]


def test_dry_run_writes_nothing_and_gpkg_fid_becomes_ogc_fid(db, files):
    before = snapshot(db)
    proc = load(db, files["dk_gpkg"], "dk", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "dry run" in proc.stdout and "loaded 100 parcels" in proc.stdout
    assert snapshot(db) == before
    proc = load(db, files["dk_gpkg"], "dk")
    assert proc.returncode == 0, proc.stderr
    # GDAL names the GeoPackage fid column `fid`: it is kept, and it is ogc_fid.
    assert db.query("SELECT count(*), count(*) FILTER (WHERE ogc_fid = fid), min(ogc_fid) FROM dk") == [(100, 100, 1)]


def test_existing_table_needs_replace(db, files):
    assert load(db, DK_SHP, "parcels").returncode == 0
    before = snapshot(db)
    proc = load(db, NL_GPKG, "parcels")
    assert_one_line_error(proc, "parcels already exists", "--replace", code=2)
    assert snapshot(db) == before and geometry_column(db, "parcels") == [("MULTIPOLYGON", 25832)]
    proc = load(db, NL_GPKG, "parcels", "--replace")
    assert proc.returncode == 0, proc.stderr
    assert "replaced" in proc.stdout
    assert geometry_column(db, "parcels") == [("MULTIPOLYGON", 28992)]
    assert db.query("SELECT count(*) FROM parcels") == [(100,)]


def test_concurrent_loads_into_one_table(db):
    """Two loads racing for one new table: one creates it, the other says it exists (no SQL error)."""
    procs = [subprocess.Popen([sys.executable, "-m", "cbm", "parcels", "load", str(path), "--table", "race"],
                              env={**os.environ, **db}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for path in (DK_SHP, NL_GPKG)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    err = next(err for rc, err in results if rc == 2)
    assert "race already exists" in err and len(err.strip().splitlines()) == 1, err
    assert db.query("SELECT count(*) FROM race") == [(100,)]


@pytest.mark.parametrize("case, needles", [
    ("missing", ["does not exist"]),
    ("empty", ["no features"]),
    ("points", ["not polygons"]),
    ("noprj", ["no coordinate reference system", "--srid"]),
    ("garbage", ["not a readable vector file"]),
    ("mixed", ["no polygon features", "not a polygon: POINT", "not a polygon: LINESTRING"]),
    ("plain_parquet", ["without GeoParquet 'geo' metadata"]),
    ("custom_crs", ["without an EPSG code", "--srid"]),
    ("two_layers", ["2 layers", "marker, marker_copy", "--layer"]),
    ("zero_bytes", ["is empty"]),
])
def test_bad_parcel_files(db, files, case, needles):
    path = {"missing": files["folder"] / "nope.shp",
            "zero_bytes": _write(files["folder"] / "zero.geojson", b"")}.get(case) or files[case]
    # An existing table of that name must survive a failed --replace untouched.
    db.query("CREATE TABLE target AS SELECT generate_series(1, 3) AS ogc_fid")
    before = snapshot(db)
    proc = load(db, path, "target", "--replace")
    err = assert_one_line_error(proc, *needles, code=2)
    assert str(path.name) in err
    assert snapshot(db) == before


def test_layer_option(db, files):
    proc = load(db, files["two_layers"], "dk", "--layer", "marker_copy")
    assert proc.returncode == 0, proc.stderr
    assert "(layer marker_copy)" in proc.stdout and "loaded 100 parcels" in proc.stdout
    assert_one_line_error(load(db, files["two_layers"], "dk2", "--layer", "nope"), "no layer 'nope'", "marker_copy",
                          code=2)


def test_no_prj_with_srid_loads(db, files):
    proc = load(db, files["noprj"], "dk_noprj", "--srid", "EPSG:25832")
    assert proc.returncode == 0, proc.stderr
    assert geometry_column(db, "dk_noprj") == [("MULTIPOLYGON", 25832)]
    # A --srid that contradicts the file's own CRS is refused.
    assert_one_line_error(load(db, DK_SHP, "dk_other", "--srid", "4326"), "EPSG:25832", code=2)


@pytest.mark.parametrize("name", ["1parcels", "parcels;drop table aois", "my-parcels", "sigs"])
def test_bad_table_name(db, name):
    before = snapshot(db)
    assert_one_line_error(load(db, DK_SHP, name), name, code=2)
    assert snapshot(db) == before


def test_load_needs_postgis(dbenv, postgis):
    postgis.psql("DROP EXTENSION postgis", dbname=dbenv.name)
    assert_one_line_error(load(dbenv, DK_SHP, "dk"), "run cbm db init first", code=2)


# -- zones --------------------------------------------------------------------------------------
S2 = "S2B_MSIL2A_20240612T103629_N0510_R008_{tile}_20240612T134208.SAFE"


def add_scene(db, tile, footprint_wkt, card="s2", epsg=None):
    db.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint, epsg)"
             " VALUES (now(), %s, '2B', %s, ST_Multi(ST_GeomFromText(%s, 4326)), %s)",
             (S2.format(tile=tile), card, footprint_wkt, epsg))


def box(x0, y0, x1, y1):
    return f"POLYGON(({x0} {y0},{x1} {y0},{x1} {y1},{x0} {y1},{x0} {y0}))"


def test_zones_both_hemispheres(db):
    from extractor import settings as settings_mod
    from extractor.parcels import utm_zones

    # An AOI straddling the equator and the 31/32 zone boundary.
    db.query("INSERT INTO aois VALUES ('eq', ST_GeomFromText(%s, 4326))", (box(5, -1, 7, 1),))
    add_scene(db, "T31NFA", box(5.5, 0, 6, 1))            # north, zone 31 (from the name)
    add_scene(db, "T32MKE", box(6, -1, 7, 0))              # band M: south, zone 32
    add_scene(db, "T31MFV", box(5, -1, 5.9, -0.1), epsg=32731)   # epsg column filled by the sync
    add_scene(db, "T33NTB", box(20, 0, 21, 1))             # does not intersect
    add_scene(db, "T30NYF", box(5, 0, 6, 1), card="bs")    # another card
    proc = run_cbm("parcels", "zones", "--aoi", "eq", env=db)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["32631", "32731", "32732"]
    assert "3 UTM zones" in proc.stderr and "3 s2 scenes" in proc.stderr
    assert utm_zones(settings_mod.load(), "eq") == [32631, 32731, 32732]

    # The seed's case: Denmark is in zones 32 and 33.
    db.query("INSERT INTO aois VALUES ('dk', ST_GeomFromText(%s, 4326))", (box(8, 54.5, 15.2, 57.8),))
    add_scene(db, "T32UNG", box(8.9, 55, 10.6, 56))
    add_scene(db, "T33UUB", box(12, 55, 13.5, 56))
    assert run_cbm("parcels", "zones", "--aoi", "dk", env=db).stdout.split() == ["32632", "32633"]


def test_zones_from_real_s2_catalog_reply(db):
    """The real CDSE reply for tile T31UFS (three baselines, titles with and without .SAFE), stored
    without the epsg column: the zone comes from the names."""
    import json

    from conftest import CDSE_REPLIES

    reply = json.loads((CDSE_REPLIES / "resto_sentinel2_l2a_page1.json").read_text())
    for f in reply["features"]:
        db.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint) VALUES"
                 " (%s, %s, '2A', 's2', ST_Multi(ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)))",
                 (f["properties"]["startDate"], f["properties"]["title"], json.dumps(f["geometry"])))
    db.query("INSERT INTO aois VALUES ('query_box', ST_GeomFromText(%s, 4326))", (box(5.07, 51.215, 5.08, 51.22),))
    proc = run_cbm("parcels", "zones", "--aoi", "query_box", env=db)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["32631"]
    assert f"from {len(reply['features'])} s2 scenes" in proc.stderr


def test_zones_unknown_aoi_and_no_scenes(db):
    before = snapshot(db)
    assert_one_line_error(run_cbm("parcels", "zones", "--aoi", "nowhere", env=db), "nowhere", "cbm aoi", code=2)
    assert snapshot(db) == before
    db.query("INSERT INTO aois VALUES ('empty', ST_GeomFromText(%s, 4326))", (box(0, 0, 1, 1),))
    proc = run_cbm("parcels", "zones", "--aoi", "empty", env=db)
    assert proc.returncode == 0 and proc.stdout == "" and "cbm catalog sync" in proc.stderr


def test_zones_without_db_init(dbenv):
    assert_one_line_error(run_cbm("parcels", "zones", "--aoi", "dk", env=dbenv), "run cbm db init first", code=2)


def test_geoparquet_attribute_types_round_trip(db, tmp_path):
    """GeoParquet columns of every common Arrow type arrive as the values they hold; no `crs` key means
    OGC:CRS84 (GeoParquet spec), i.e. EPSG:4326."""
    import datetime
    import json
    import struct

    import pyarrow as pa
    import pyarrow.parquet as pq

    square = struct.pack("<BIII", 1, 3, 1, 5) + b"".join(struct.pack("<dd", x, y) for x, y in
                                                        [(0, 0), (1, 0), (1, 1), (0, 1), (0, 0)])
    table = pa.table({
        "Crop Name": ["wheat", "", None],
        "sown": [datetime.date(2024, 3, 1)] * 3,
        "seen": pa.array([datetime.datetime(2024, 3, 1, 12, 0, 0, 123456)] * 3, pa.timestamp("ns")),
        "organic": [True, False, None],
        "kind": pa.array(["x", "y", "x"]).dictionary_encode(),
        "codes": [[1, 2], [3], None],
        "note": ['said "hi", ok', "two\nlines", "back\\slash"],
        "geometry": [square] * 3,
    })
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}
    path = tmp_path / "types.parquet"
    pq.write_table(table.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), path)
    proc = load(db, path, "typed")
    assert proc.returncode == 0, proc.stderr
    assert "SRID 4326" in proc.stdout
    rows = db.query("SELECT ogc_fid, crop_name, sown, seen, organic, kind, codes, note FROM typed ORDER BY ogc_fid")
    assert rows == [
        (1, "wheat", datetime.date(2024, 3, 1), datetime.datetime(2024, 3, 1, 12, 0, 0, 123456), True, "x", "[1, 2]",
         'said "hi", ok'),
        (2, "", datetime.date(2024, 3, 1), datetime.datetime(2024, 3, 1, 12, 0, 0, 123456), False, "y", "[3]",
         "two\nlines"),
        (3, None, datetime.date(2024, 3, 1), datetime.datetime(2024, 3, 1, 12, 0, 0, 123456), None, "x", None,
         "back\\slash"),
    ]


def test_launder_and_hex_of():
    """Column names as ogr2ogr launders them, unique and off our own; WKB hex for any Arrow slice."""
    import pyarrow as pa

    from extractor.parcel_copy import hex_of
    from extractor.parcels import launder

    assert launder(["Marknr", "IMK areal", "ogc_fid", "marknr", "Afgrøde", "", "x" * 70]) == [
        "marknr", "imk_areal", "ogc_fid_2", "marknr_2", "afgrøde", "field_6", "x" * 63]
    arr = pa.array([b"\x01\x02", None, b"", b"\xff", None, b"\x10\x20\x30"], pa.binary())
    for part in (arr, arr.slice(1), arr.slice(2, 3), arr.slice(5)):
        assert hex_of(part).to_pylist() == [None if v is None else v.hex() for v in part.to_pylist()]
