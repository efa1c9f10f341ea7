"""Extraction results equal an independent computation on the same pixels (GDAL pixel-centre
rule, nodata 0 left out), for S2 (JP2 in a SAFE), CARD-BS (ENVI) and COH6 (GeoTIFF)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rasterio import Affine

from conftest import run_cbm
from extract_helpers import (EPSG, X0, Y0, extract_env, init_db, make_world, parcel_geometries,
                             pixel_values, scene_id, sigs)
from extractor.extract.kernels import reference_stats


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("eodata"))


def run(env, card, res, *more):
    proc = run_cbm("extract", "run", "--card", card, "--res", str(res), *more, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc


def assert_matches_reference(got: dict, geoms: dict, arrays: dict, transform: Affine, codes: dict):
    expected_keys = set()
    for band, code in codes.items():
        for fid, geom in geoms.items():
            ref = reference_stats(pixel_values(geom, arrays[band], transform))
            if ref is None:
                continue
            expected_keys.add((fid, code))
            row = np.array(got[(fid, code)], dtype=np.float32)  # real columns: float32 values
            assert row[0] == ref[0], (fid, code)                                   # count exact
            assert row[3] == np.float32(ref[3]) and row[4] == np.float32(ref[4])   # min, max exact
            assert row[1] == pytest.approx(ref[1], rel=1e-6)                       # mean
            assert row[2] == pytest.approx(ref[2], rel=1e-6, abs=1e-9)             # std (ddof=0)
            assert list(row[5:]) == [np.float32(v) for v in ref[5:]]               # percentiles, numpy linear
    assert set(got) == expected_keys


def test_s2_all_runs_match_numpy_reference_and_statuses(dbenv, world):
    init_db(dbenv, world)
    env = extract_env(dbenv, world)
    first = run(env, "s2", -1)
    assert "no scene left" in first.stdout
    run(env, "s2", 10)
    run(env, "s2", 20)
    geoms = parcel_geometries(dbenv, EPSG)
    t10 = Affine(10, 0, X0, 0, -10, Y0)
    t20 = Affine(20, 0, X0, 0, -20, Y0)
    s2 = [s for s in world.scenes if s.card == "s2" and s.tile == "31UFS"]
    for s in s2:
        obsid = scene_id(dbenv, s.reference)
        got = sigs(dbenv, obsid)
        assert_matches_reference({k: v for k, v in got.items() if k[1] in ("B02", "B03", "B04", "B08")},
                                 geoms, s.arrays, t10, {b: b for b in ("B02", "B03", "B04", "B08")})
        assert_matches_reference({k: v for k, v in got.items() if k[1] not in ("B02", "B03", "B04", "B08")},
                                 geoms, s.arrays, t20, {b: b for b in ("B05", "B06", "B07", "B8A", "B11", "B12")})
        # edge cases of the pixel rule
        pids = {k[0] for k in got}
        assert 5 in pids and got[(5, "B04")][0] == 1       # smaller than a pixel, covers one centre
        assert 6 not in pids and 7 not in pids              # no centre / all nodata: no row
        assert {4, 12, 8, 2, 3, 10, 11} <= pids             # edges, partial nodata, hole, multi, overlaps
        hists = dict(dbenv.query("SELECT pid, hist::text FROM hists WHERE obsid = %s", (obsid,)))
        for fid, geom in geoms.items():
            vals = pixel_values(geom, s.arrays["SCL"], t20)
            vals = vals[vals != 0]
            if vals.size == 0:
                assert fid not in hists
                continue
            classes, counts = np.unique(vals, return_counts=True)
            assert json.loads(hists[fid]) == {str(c): int(n) for c, n in zip(classes, counts)}
    status = dict(dbenv.query("SELECT reference, status FROM dias_catalogue WHERE card = 's2'"))
    for s in s2:
        assert status[s.reference] == "extracted"
    empty = next(s for s in world.scenes if s.tile == "31UGS")
    assert status[empty.reference] == "No parcels"
    runs = dbenv.query("SELECT r.res, r.status FROM extraction_runs r JOIN dias_catalogue c ON c.id = r.obsid"
                       " WHERE c.reference = %s", (empty.reference,))
    assert runs == [(-1, "No parcels")]  # the 10 and 20 m runs skipped it
    # a second pass finds nothing to do and writes nothing
    before = dbenv.query("SELECT count(*) FROM sigs")[0][0]
    again = run(env, "s2", 10)
    assert "processed 0 scene" in again.stdout
    assert dbenv.query("SELECT count(*) FROM sigs")[0][0] == before


@pytest.mark.parametrize("card,res,suffix", [("bs", 10, "b"), ("c6", 20, "c")])
def test_s1_cards_read_their_own_crs(dbenv, world, card, res, suffix):
    init_db(dbenv, world)
    env = extract_env(dbenv, world)
    proc = run(env, card, res)
    s = next(s for s in world.scenes if s.card == card)
    assert "extracted" in proc.stdout, proc.stdout
    srid = int(s.arrays["crs"].split(":")[1])
    geoms = parcel_geometries(dbenv, srid)
    got = sigs(dbenv, scene_id(dbenv, s.reference))
    assert got, "no rows"
    assert_matches_reference(got, geoms, s.arrays, s.arrays["transform"], {"VV": "VV" + suffix, "VH": "VH" + suffix})
    assert dbenv.query("SELECT status FROM dias_catalogue WHERE reference = %s", (s.reference,)) == [("extracted",)]


def test_whole_scene_equals_rasterstats(dbenv, world):
    from rasterstats import zonal_stats

    init_db(dbenv, world)
    run(extract_env(dbenv, world), "s2", 10)
    s = next(s for s in world.scenes if s.card == "s2" and s.tile == "31UFS")
    geoms = parcel_geometries(dbenv, EPSG)
    path = next((world.root / s.path[len("/eodata/"):]).rglob("*_B08_10m.jp2"))
    fids = sorted(geoms)
    zs = zonal_stats([geoms[f] for f in fids], str(path), nodata=0,
                     stats="count mean std min max percentile_25 percentile_50 percentile_75")
    got = sigs(dbenv, scene_id(dbenv, s.reference))
    for fid, z in zip(fids, zs):
        if not z["count"]:
            assert (fid, "B08") not in got
            continue
        row = np.array(got[(fid, "B08")], dtype=np.float32)
        assert row[0] == z["count"] and row[3] == z["min"] and row[4] == z["max"]
        assert row[1] == pytest.approx(z["mean"], rel=1e-6) and row[2] == pytest.approx(z["std"], rel=1e-6)
        assert list(row[5:]) == [np.float32(z[k]) for k in ("percentile_25", "percentile_50", "percentile_75")]


def test_prepare_builds_the_grids_the_catalogue_needs_once(dbenv, world):
    init_db(dbenv, world)
    env = extract_env(dbenv, world)
    dry = run_cbm("extract", "prepare", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "would rasterize parcels for s2 EPSG:32631 10 m" in dry.stdout
    assert dbenv.query("SELECT count(*) FROM extract_grids") == [(0,)]
    proc = run_cbm("extract", "prepare", env=env)
    assert proc.returncode == 0, proc.stderr
    grids = dbenv.query("SELECT crs, res_x, phase_x, parcels_n FROM extract_grids ORDER BY id")
    assert [(g[0], g[1], g[2]) for g in grids[:2]] == [("EPSG:32631", 10.0, 0.0), ("EPSG:32631", 20.0, 0.0)]
    assert {g[0] for g in grids[2:]} == {"EPSG:4326", "EPSG:3035"}  # read from the S1 files
    assert all(g[3] == 11 for g in grids[:1])  # parcel 6 covers no pixel centre at 10 m
    again = run_cbm("extract", "prepare", env=env)
    assert again.returncode == 0 and dbenv.query("SELECT count(*) FROM extract_grids") == [(len(grids),)]
    # the workers use the prepared grids (no new build)
    run(env, "s2", 10)
    assert dbenv.query("SELECT count(*) FROM extract_grids") == [(len(grids),)]
