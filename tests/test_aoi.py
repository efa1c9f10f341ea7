"""`cbm aoi add` / `cbm aoi list` on a real PostGIS, from the real DK parcels and from GeoJSON files."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error, run_cbm
from parcel_samples import DK_SHP, NL_GPKG, POINT, init_schema, snapshot

# The seed's Denmark AOI (a GeoJSON polygon in EPSG:4326).
DK_POLYGON = {"type": "Polygon", "coordinates": [[
    [7.994683223865975, 54.79423424555831], [12.543023067615975, 54.540088425896286],
    [15.377495723865975, 54.996407489112244], [15.025933223865975, 55.38523613348353],
    [13.191216426990975, 55.235171965073455], [11.158745723865975, 58.08938516937467],
    [7.434380489490975, 56.84285231095577], [7.994683223865975, 54.79423424555831]]]}
SQUARE_A = {"type": "Polygon", "coordinates": [[[4, 52], [5, 52], [5, 53], [4, 53], [4, 52]]]}
SQUARE_B = {"type": "Polygon", "coordinates": [[[6, 50], [7, 50], [7, 51], [6, 51], [6, 50]]]}


@pytest.fixture
def db(dbenv):
    """A database after `cbm db init` (run in-process: the command itself is tested in test_db.py)."""
    init_schema()
    return dbenv


@pytest.fixture
def dk(db):
    """The DK parcels in table dk_parcels (loaded in-process: the command is tested in test_parcels.py)."""
    from extractor import settings
    from extractor.parcel_files import open_parcel_file
    from extractor.parcels import load_parcels

    assert load_parcels(settings.load(), open_parcel_file(DK_SHP), "dk_parcels").loaded == 100
    return db


def write(tmp_path, name, doc):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_from_parcels_covers_every_parcel(dk):
    before = snapshot(dk)
    proc = run_cbm("aoi", "add", "dk", "--from-parcels", "dk_parcels", "--dry-run", env=dk)
    assert proc.returncode == 0 and "dry run" in proc.stdout and "lon 8.5" in proc.stdout, proc
    assert snapshot(dk) == before
    proc = run_cbm("aoi", "add", "dk", "--from-parcels", "dk_parcels", env=dk)
    assert proc.returncode == 0, proc.stderr
    assert "extent of 100 parcels" in proc.stdout and "EPSG:25832" in proc.stdout
    assert dk.query("SELECT GeometryType(wkb_geometry), ST_SRID(wkb_geometry) FROM aois WHERE name = 'dk'") \
        == [("POLYGON", 4326)]
    assert dk.query("SELECT bool_and(ST_CoveredBy(ST_Transform(p.wkb_geometry, 4326), a.wkb_geometry))"
                    " FROM dk_parcels p, aois a WHERE a.name = 'dk'") == [(True,)]
    # It contains the seed's polygon (the transformed corners of the extent) and is only slightly larger.
    ratio = dk.query(
        "SELECT ST_Area(a.wkb_geometry) / ST_Area(s.g), ST_Covers(a.wkb_geometry, s.g) FROM aois a,"
        " (SELECT ST_Transform(ST_SetSRID(ST_Extent(wkb_geometry), 25832), 4326) AS g FROM dk_parcels) s"
        " WHERE a.name = 'dk'")[0]
    assert ratio[1] and 1 < ratio[0] < 1.2, ratio
    # ... which leaves parcels out: its straight lon/lat edges cut the bulging projected edges.
    missed = dk.query("SELECT count(*) FROM dk_parcels p, (SELECT ST_Transform(ST_SetSRID(ST_Extent(wkb_geometry),"
                      " 25832), 4326) AS g FROM dk_parcels) s WHERE NOT ST_CoveredBy(ST_Transform(p.wkb_geometry, 4326), s.g)")
    assert missed[0][0] > 0


def test_existing_name_needs_replace_and_list(dk, tmp_path):
    assert run_cbm("aoi", "add", "dk", "--from-parcels", "dk_parcels", env=dk).returncode == 0
    before = snapshot(dk)
    geojson = write(tmp_path, "dk.geojson", DK_POLYGON)
    assert_one_line_error(run_cbm("aoi", "add", "dk", "--geojson", geojson, env=dk), "dk", "--replace", code=2)
    assert snapshot(dk) == before
    proc = run_cbm("aoi", "add", "dk", "--geojson", geojson, "--replace", env=dk)
    assert proc.returncode == 0, proc.stderr
    assert dk.query("SELECT count(*) FROM aois WHERE name = 'dk'") == [(1,)]
    # A single Polygon is stored as it is.
    assert dk.query("SELECT ST_Equals(wkb_geometry, ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)) FROM aois",
                    (json.dumps(DK_POLYGON),)) == [(True,)]
    assert run_cbm("aoi", "add", "other", "--geojson", write(tmp_path, "a.geojson", SQUARE_A), env=dk).returncode == 0
    lines = run_cbm("aoi", "list", env=dk).stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["name", "dk", "other"]
    assert lines[1].split()[1:5] == ["7.43438", "54.54009", "15.37750", "58.08939"]


def test_geojson_several_polygons_become_convex_hull(db, tmp_path):
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": SQUARE_A},
        {"type": "Feature", "properties": {}, "geometry": SQUARE_B}]}
    proc = run_cbm("aoi", "add", "two", "--geojson", write(tmp_path, "fc.geojson", fc), env=db)
    assert proc.returncode == 0, proc.stderr
    assert "convex hull of 2" in proc.stdout
    hull = db.query("SELECT ST_Equals(wkb_geometry, ST_ConvexHull(ST_Collect(ST_GeomFromGeoJSON(%s),"
                    " ST_GeomFromGeoJSON(%s)))), GeometryType(wkb_geometry) FROM aois WHERE name = 'two'",
                    (json.dumps(SQUARE_A), json.dumps(SQUARE_B)))
    assert hull == [(True, "POLYGON")]
    multi = {"type": "Feature", "properties": {}, "geometry": {
        "type": "MultiPolygon", "coordinates": [SQUARE_A["coordinates"], SQUARE_B["coordinates"]]}}
    assert run_cbm("aoi", "add", "multi", "--geojson", write(tmp_path, "m.geojson", multi), env=db).returncode == 0
    assert db.query("SELECT ST_Equals(a.wkb_geometry, b.wkb_geometry) FROM aois a, aois b"
                    " WHERE a.name = 'two' AND b.name = 'multi'") == [(True,)]


@pytest.mark.parametrize("args, needles", [
    (["--from-parcels", "nope"], ["nope", "does not exist", "cbm parcels load"]),
    (["--from-parcels", "bad-name"], ["bad-name", "not a valid table name"]),
    (["--geojson", "{missing}"], ["does not exist"]),
    (["--geojson", "{point}"], ["Point", "not a Polygon"]),
    (["--geojson", "{garbage}"], ["not valid JSON"]),
    (["--geojson", "{projected}"], ["EPSG:4326"]),
    (["--geojson", "{flat}"], ["cannot read", "not sufficiently nested"]),
    (["--geojson", "{open_ring}"], ["cannot use", "closed linestring"]),
])
def test_bad_aoi_input(dk, tmp_path, args, needles):
    files = {
        "{missing}": str(tmp_path / "missing.geojson"),
        "{point}": write(tmp_path, "point.geojson", {"type": "Feature", "properties": {}, "geometry": POINT}),
        "{garbage}": write(tmp_path, "garbage.geojson", "<html>not json"),
        "{projected}": write(tmp_path, "utm.geojson", {"type": "Polygon", "coordinates": [[
            [500000, 6200000], [500100, 6200000], [500100, 6200100], [500000, 6200000]]]}),
        "{flat}": write(tmp_path, "flat.geojson", {"type": "Polygon", "coordinates": [[1, 2]]}),
        "{open_ring}": write(tmp_path, "open.geojson", {"type": "Polygon", "coordinates": [
            [[0, 0], [1, 0], [1, 1], [0, 0]], [[0, 0], [1, 1]]]}),
    }
    before = snapshot(dk)
    proc = run_cbm("aoi", "add", "x", *[files.get(a, a) for a in args], env=dk)
    assert_one_line_error(proc, *needles, code=2)
    assert snapshot(dk) == before


def test_bad_aoi_name(db, tmp_path):
    before = snapshot(db)
    assert_one_line_error(run_cbm("aoi", "add", "DK 2024", "--geojson", write(tmp_path, "a.json", SQUARE_A),
                                  env=db), "DK 2024", "lower-case", code=2)
    assert snapshot(db) == before


def test_aoi_without_db_init(dbenv, tmp_path):
    # Parcels can be loaded before `cbm db init` (PostGIS is there), the AOI needs the aois table.
    assert run_cbm("parcels", "load", str(NL_GPKG), "--table", "nl", env=dbenv).returncode == 0
    before = snapshot(dbenv)
    assert_one_line_error(run_cbm("aoi", "add", "nl", "--from-parcels", "nl", env=dbenv),
                          "run cbm db init first", code=2)
    assert_one_line_error(run_cbm("aoi", "list", env=dbenv), "run cbm db init first", code=2)
    assert snapshot(dbenv) == before
