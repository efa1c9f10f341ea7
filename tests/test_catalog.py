"""Catalog sync against a local server that replays real CDSE replies and generated ones."""

import json
from collections import defaultdict

import pytest

from conftest import CDSE_REPLIES, assert_one_line_error, run_cbm
from extractor.catalog import S2_TITLE, rank
from sandbox.catalog_replay import CatalogReplay, s1_feature, s2_feature

S2_PAGE = CDSE_REPLIES / "resto_sentinel2_l2a_page1.json"
S1_PAGE = CDSE_REPLIES / "resto_sentinel1_page1_with_next_link.json"
AOI = "SRID=4326;POLYGON((5.0 51.1, 5.3 51.1, 5.3 51.4, 5.0 51.4, 5.0 51.1))"


@pytest.fixture
def db(dbenv):
    assert run_cbm("db", "init", env=dbenv).returncode == 0
    dbenv.query("INSERT INTO aois VALUES ('nl', ST_GeomFromEWKT(%s))", (AOI,))
    return dbenv


def sync(db, cat, *args, **env):
    return run_cbm("catalog", "sync", *args, env={**db, "CBM_CATALOG_URL": cat.url, "CBM_CATALOG_BACKOFF": "0.01",
                                                  "CBM_CATALOG_RETRIES": "2", **env})


def catalogue(db):
    return db.query("SELECT reference, product_path, card, sensor, tile, epsg, ST_GeometryType(footprint)"
                    " FROM dias_catalogue ORDER BY obstime")


def test_real_s2_reply_keeps_one_product_per_scene(db):
    features = json.loads(S2_PAGE.read_text())["features"]
    scenes = defaultdict(list)
    for f in features:
        m = S2_TITLE.match(f["properties"]["title"])
        scenes[(m.group(4), m.group(2))].append(f["properties"])
    expected = {max(ps, key=lambda p: rank(p["processingBaseline"]))["title"] for ps in scenes.values()}

    with CatalogReplay(recorded={("Sentinel2", 1): S2_PAGE}) as cat:
        proc = sync(db, cat, "nl", "2018-03-26", "2018-04-10", "s2")
        assert proc.returncode == 0, proc.stderr
        rows = catalogue(db)
        assert {r[0] for r in rows} == expected
        assert all("_N0500_" in r[0] and "/L2A_N0500/" in r[1] for r in rows)
        assert {r[4] for r in rows} == {"31UFS"} and {r[5] for r in rows} == {32631}
        assert f"{len(expected)} new" in proc.stdout
        assert f"{len(features) - len(expected)} skipped as duplicate baselines" in proc.stdout
        # the seed's summary table
        assert "s2" in proc.stdout and "2A" in proc.stdout and "2B" in proc.stdout
        # every request sends maxRecords
        assert cat.requests and all(r.get("maxRecords") == "2000" for r in cat.requests)
        assert cat.requests[0]["productType"] == "S2MSI2A"

        again = sync(db, cat, "nl", "2018-03-26", "2018-04-10", "s2")
        assert again.returncode == 0, again.stderr
        assert "0 new" in again.stdout and f"{len(expected)} already known" in again.stdout
        assert catalogue(db) == rows


def test_real_s1_reply_follows_next_link_and_skips_features_without_geometry(db):
    with CatalogReplay(recorded={("Sentinel1", 1): S1_PAGE}) as cat:
        proc = sync(db, cat, "nl", "2014-06-01", "2014-06-30", "bs")
        assert proc.returncode == 0, proc.stderr
        assert [r.get("page") for r in cat.requests] == [None, "2"]  # followed next, stopped on the empty page
        assert "10 skipped without footprint" in proc.stdout
        assert catalogue(db) == []


def test_full_last_page_then_empty_page(db, tmp_path):
    feats = [s1_feature("bs", f"202305{d:02d}T053000", [[[5, 51], [6, 51], [6, 52], [5, 52], [5, 51]]]) for d in range(1, 11)]
    with CatalogReplay(features={"Sentinel1": feats}) as cat:
        proc = sync(db, cat, "nl", "2023-05-01", "2023-05-31", "bs", CBM_CATALOG_PAGE_SIZE="5")
        assert proc.returncode == 0, proc.stderr
        assert [r.get("page") for r in cat.requests] == [None, "2", "3"]
        assert len(catalogue(db)) == 10


def test_window_is_split_before_the_offset_cap(db):
    # 2,500 products with the real cap (10,000) would be slow; the cap is a setting, the server
    # answers 400 past it exactly as CDSE does, so a smaller cap exercises the same path.
    feats = [s1_feature("c6", f"2023{m:02d}{d:02d}T0{h}3000", [[[5, 51], [6, 51], [6, 52], [5, 52], [5, 51]]])
             for m in (1, 2, 3) for d in range(1, 28) for h in (5, 7)]
    with CatalogReplay(features={"Sentinel1": feats}, max_offset=40) as cat:
        proc = sync(db, cat, "nl", "2023-01-01", "2023-03-31", "c6",
                    CBM_CATALOG_PAGE_SIZE="10", CBM_CATALOG_MAX_OFFSET="40")
        assert proc.returncode == 0, proc.stderr
        assert len(catalogue(db)) == len(feats)
        assert "window split" in proc.stdout
        for r in cat.requests:
            assert (int(r.get("page", 1)) - 1) * 10 < 40


def test_multipolygon_footprint_is_stored(db):
    multi = [[[[5, 51], [5.2, 51], [5.2, 51.2], [5, 51]]], [[[5.25, 51.25], [5.3, 51.25], [5.3, 51.3], [5.25, 51.25]]]]
    with CatalogReplay(features={"Sentinel1": [s1_feature("bs", "20230501T053000", multi)]}) as cat:
        proc = sync(db, cat, "nl", "2023-05-01", "2023-05-02", "bs")
        assert proc.returncode == 0, proc.stderr
    assert db.query("SELECT ST_NumGeometries(footprint), card, sensor FROM dias_catalogue") == [(2, "bs", "1A")]


def test_better_baseline_later_replaces_only_unused_scenes(db):
    old = [s2_feature("31UFS", "20230501T105031", "N0400"), s2_feature("31UFS", "20230503T105031", "N0400")]
    new = [s2_feature("31UFS", "20230501T105031", "N0500"), s2_feature("31UFS", "20230503T105031", "N0500")]
    with CatalogReplay(features={"Sentinel2": old}) as cat:
        assert sync(db, cat, "nl", "2023-05-01", "2023-05-31", "s2").returncode == 0
    db.query("UPDATE dias_catalogue SET status = 'extracted' WHERE reference LIKE '%20230503%'")
    with CatalogReplay(features={"Sentinel2": old + new}) as cat:
        proc = sync(db, cat, "nl", "2023-05-01", "2023-05-31", "s2")
        assert proc.returncode == 0, proc.stderr
    refs = sorted(r[0] for r in catalogue(db))
    assert "_N0500_" in refs[0] and "20230501" in refs[0]   # unused: upgraded in place
    assert "_N0400_" in refs[1] and "20230503" in refs[1]   # already extracted: kept
    assert "1 replaced" in proc.stdout


@pytest.mark.parametrize("fault,requests", [("429:2", 3), ("cut:1", 2)])  # rate limit; a reply cut short
def test_transient_faults_are_retried(db, fault, requests):
    with CatalogReplay(features={"Sentinel1": [s1_feature("bs", "20230501T053000", [[[5, 51], [6, 51], [6, 52], [5, 51]]])]},
                       fault=fault) as cat:
        proc = sync(db, cat, "nl", "2023-05-01", "2023-05-02", "bs")
        assert proc.returncode == 0, proc.stderr
        assert len(cat.requests) == requests
    assert len(catalogue(db)) == 1


@pytest.mark.parametrize("fault,needle", [("html", "not JSON"), ("truncated", "not JSON"), ("500", "HTTP 500")])
def test_bad_replies_leave_the_database_as_it_was(db, fault, needle):
    with CatalogReplay(recorded={("Sentinel2", 1): S2_PAGE}) as cat:
        assert sync(db, cat, "nl", "2018-03-26", "2018-04-10", "s2").returncode == 0
    before = catalogue(db)
    feats = [s2_feature("31UFS", "20230501T105031")]
    with CatalogReplay(features={"Sentinel2": feats}, fault=fault) as cat:
        proc = sync(db, cat, "nl", "2023-05-01", "2023-05-31", "s2")
        assert_one_line_error(proc, needle, cat.url, code=1)
    assert catalogue(db) == before


@pytest.mark.parametrize("args,needle", [
    (("nl", "2023-05-31", "2023-05-01", "s2"), "after END"),
    (("nl", "2023-05-01", "2023-05-31", "s3"), "unknown CARD"),
    (("nl", "2023-05-01", "2023-05-31", "s2", "CARD-BS"), "does not go with CARD"),
    (("nl", "2023-13-01", "2023-05-31", "s2"), "START"),
    (("atlantis", "2023-05-01", "2023-05-31", "s2"), "unknown AOI"),
])
def test_bad_arguments(db, args, needle):
    with CatalogReplay(features={}) as cat:
        proc = sync(db, cat, *args)
        assert_one_line_error(proc, needle, code=2)
    assert catalogue(db) == []


def test_without_schema_says_run_db_init(dbenv):
    with CatalogReplay(features={}) as cat:
        proc = run_cbm("catalog", "sync", "nl", "2023-05-01", "2023-05-31", "s2", env={**dbenv, "CBM_CATALOG_URL": cat.url})
        assert_one_line_error(proc, "cbm db init", code=2)


def test_unreachable_catalog(db):
    proc = run_cbm("catalog", "sync", "nl", "2023-05-01", "2023-05-31", "s2",
                   env={**db, "CBM_CATALOG_URL": "http://127.0.0.1:1/resto", "CBM_CATALOG_RETRIES": "1",
                        "CBM_CATALOG_BACKOFF": "0.01"})
    assert_one_line_error(proc, "unreachable", "127.0.0.1:1", code=1)
