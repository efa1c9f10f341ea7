"""`cbm timeseries` on the real throwaway PostGIS: the CSV holds exactly the sigs rows of the parcels
asked for, NDVI equals the formula computed here (with the BOA offset from baseline 04.00, without
it before and for N9999), the clear flag follows the SCL histogram, dB is 10 log10 of the linear
value, the PNG is a real PNG of the documented size, bad input is one line, and the query is an index
scan on pid."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import random
import struct

import pytest

from cbm.commands import timeseries as ts_cmd
from conftest import assert_one_line_error, run_cbm
from extractor import db, schema
from extractor import settings as settings_mod
from extractor import timeseries as ts

# reference -> (card, obstime, processing_baseline, the BOA offset the product's DN carry)
S2 = "S2A_MSIL2A_{}T103021_N{}_R108_T32UNG_{}T120000.SAFE"
SCENES = {
    S2.format("20240405", "0510", "20240405"): ("s2", dt.datetime(2024, 4, 5, 10, 30, 21), 5.1, -1000),
    S2.format("20240415", "0400", "20240415"): ("s2", dt.datetime(2024, 4, 15, 10, 30, 21), None, -1000),
    S2.format("20210420", "0207", "20210420"): ("s2", dt.datetime(2021, 4, 20, 10, 30, 21), 2.07, 0),
    S2.format("20210425", "9999", "20210425").removesuffix(".SAFE"): ("s2", dt.datetime(2021, 4, 25, 10, 30, 21), 99.99, 0),
    S2.format("20240501", "0509", "20240501"): ("s2", dt.datetime(2024, 5, 1, 10, 30, 21), 5.09, -1000),
    "S1A_IW_GRDH_1SDV_20240410T170000_20240410T170025_053000_066000_AAAA_CARD_BS": (
        "bs", dt.datetime(2024, 4, 10, 17, 0), None, 0),
    "S1A_IW_GRDH_1SDV_20240422T170000_20240422T170025_053175_066600_BBBB_CARD_BS": (
        "bs", dt.datetime(2024, 4, 22, 17, 0), None, 0),
    "S1A_S1B_20210412_20210418_COH6": ("c6", dt.datetime(2021, 4, 18, 5, 50), None, 0),
}
BANDS = {"s2": ("B02", "B03", "B04", "B08"), "bs": ("VV", "VH"), "c6": ("VV", "VH")}
STATS = ("count", "mean", "std", "min", "max", "p25", "p50", "p75")
PIDS = (11, 12, 13)          # 13 is in the parcel table but has no observation
CLEAR = (4, 5, 6)            # SCL vegetation, bare soils, water


def settings():
    return settings_mod.load()


@pytest.fixture
def world(dbenv):
    """Catalogue, parcels, sigs and hists rows; returns {(pid, reference): {"bands": {...}, "hist": {...}}}."""
    s = settings()
    rng = random.Random(13)
    inserted = {}
    with db.session(s) as conn, conn.cursor() as cur:
        schema.init_schema(conn, s)
        cur.execute("CREATE TABLE parcels (ogc_fid integer PRIMARY KEY, wkb_geometry geometry(MultiPolygon, 4326))")
        cur.executemany("INSERT INTO parcels VALUES (%s, NULL)", [(p,) for p in PIDS])
        for ref, (card, obstime, baseline, _) in SCENES.items():
            cur.execute("INSERT INTO dias_catalogue (obstime, reference, sensor, card, processing_baseline)"
                        " VALUES (%s, %s, %s, %s, %s) RETURNING id", (obstime, ref, ref[1:3], card, baseline))
            obsid = cur.fetchone()[0]
            for pid in PIDS[:2]:
                bands = {}
                for band in BANDS[card]:
                    if card == "s2":
                        lo = rng.uniform(1100, 3000)
                        mean = lo + rng.uniform(0, 2000)
                    else:
                        lo = rng.uniform(0.001, 0.05)
                        mean = lo + rng.uniform(0, 0.2)
                    values = (float(rng.randint(5, 400)), mean, mean / 10, lo, mean * 2, mean * 0.9, mean, mean * 1.1)
                    cur.execute("INSERT INTO sigs (pid, obsid, band, count, mean, std, min, max, p25, p50, p75)"
                                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", (pid, obsid, band, *values))
                    bands[band] = values
                hist = None
                if card == "s2" and (pid, ref) != (12, S2.format("20240501", "0509", "20240501")):  # one without
                    hist = {str(c): rng.randint(0, 60) for c in rng.sample(range(1, 12), 5)}
                    if rng.random() < 0.5:
                        hist.update({"4": rng.randint(200, 400)})   # mostly clear
                    cur.execute("INSERT INTO hists (pid, obsid, hist) VALUES (%s, %s, %s)", (pid, obsid, json.dumps(hist)))
                inserted[(pid, ref)] = {"bands": bands, "hist": hist}
    return inserted


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def number(text):
    return None if text == "" else float(text)


def share(hist):
    total = sum(n for c, n in hist.items() if int(c) != 0)
    return sum(n for c, n in hist.items() if int(c) in CLEAR) / total


def test_csv_rows_are_the_sigs_rows_plus_ndvi_db_and_clear(world, tmp_path):
    out = tmp_path / "series.csv"
    proc = run_cbm("timeseries", "parcels", "11", "12", "--csv", str(out), "--clear-threshold", "0.7")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out)
    assert list(rows[0]) == list(ts.COLUMNS)

    raw = [r for r in rows if r["band"] in {b for bands in BANDS.values() for b in bands}]
    # exactly the sigs rows of the two parcels, values as stored (real)
    stored = {(pid, ref, band.strip()): vals for pid, ref, band, *vals in settings_rows(
        "SELECT s.pid, c.reference, s.band, s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75"
        " FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid WHERE s.pid IN (11, 12)")}
    assert len(raw) == len(stored) == sum(len(v["bands"]) for v in world.values())
    for r in raw:
        assert [number(r[k]) for k in STATS] == stored[(int(r["pid"]), r["reference"], r["band"])]
        card, obstime, _, _ = SCENES[r["reference"]]
        assert (r["card"], dt.datetime.fromisoformat(r["obstime"])) == (card, obstime)
    # rows ordered by parcel then time
    keys = [(int(r["pid"]), r["obstime"]) for r in rows]
    assert keys == sorted(keys)

    ndvi = {(int(r["pid"]), r["reference"]): r for r in rows if r["band"] == "NDVI"}
    s2 = [(pid, ref) for (pid, ref) in world if SCENES[ref][0] == "s2"]
    assert set(ndvi) == set(s2)
    for (pid, ref), r in ndvi.items():
        red, nir = stored[(pid, ref, "B04")][1], stored[(pid, ref, "B08")][1]
        offset = SCENES[ref][3]
        expected = ((nir + offset) / 10000 - (red + offset) / 10000) / ((nir + offset) / 10000 + (red + offset) / 10000)
        assert number(r["mean"]) == pytest.approx(expected, rel=1e-9)
        if offset:   # the offset changes the value: a series ignoring it would fail here
            assert number(r["mean"]) != pytest.approx((nir - red) / (nir + red), rel=1e-6)
        assert number(r["count"]) == min(stored[(pid, ref, "B04")][0], stored[(pid, ref, "B08")][0])
        assert r["std"] == r["p50"] == ""

    for r in rows:
        pid, ref = int(r["pid"]), r["reference"]
        hist = world[(pid, ref)]["hist"]
        if SCENES[ref][0] != "s2" or hist is None:
            assert r["clear"] == r["clear_share"] == ""
        else:
            assert number(r["clear_share"]) == pytest.approx(share(hist))
            assert r["clear"] == ("1" if share(hist) >= 0.7 else "0")
    flags = {r["clear"] for r in rows if r["card"] == "s2"}
    assert {"0", "1", ""} <= flags, "the test data must hold clear, cloudy and unflagged observations"

    db_rows = [r for r in rows if r["band"].endswith("_db")]
    assert {r["card"] for r in db_rows} == {"bs"}
    assert len(db_rows) == sum(len(v["bands"]) for (pid, ref), v in world.items() if SCENES[ref][0] == "bs")
    for r in db_rows:
        linear = stored[(int(r["pid"]), r["reference"], r["band"].removesuffix("_db"))]
        for k in ("mean", "min", "max", "p25", "p50", "p75"):
            assert number(r[k]) == pytest.approx(10 * math.log10(linear[STATS.index(k)]), rel=1e-9)
        assert r["std"] == ""


def settings_rows(query):
    with db.session(settings()) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def test_card_and_dates_filter(world, tmp_path):
    out = tmp_path / "s2.csv"
    proc = run_cbm("timeseries", "parcels", "11", "--card", "s2", "--from", "2024-04-05", "--to", "2024-04-15",
                   "--csv", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = read_csv(out)
    want = {ref for ref, (card, t, _, _) in SCENES.items()
            if card == "s2" and dt.datetime(2024, 4, 5) <= t < dt.datetime(2024, 4, 16)}
    assert len(want) == 2   # --to is inclusive: the scene of 2024-04-15 10:30 is in
    assert {r["reference"] for r in rows} == want
    assert {r["pid"] for r in rows} == {"11"}


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png_is_a_chart_of_the_documented_size(world, tmp_path):
    png = tmp_path / "series.png"
    proc = run_cbm("timeseries", "parcels", "11", "12", "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    assert f"plot: {png}" in proc.stdout
    # four quantities in the data: NDVI, S2 reflectances, S1 dB, coherence
    assert png_size(png) == (ts_cmd.WIDTH_IN * ts_cmd.DPI, 4 * ts_cmd.PANEL_IN * ts_cmd.DPI)

    only_bs = tmp_path / "bs.png"
    proc = run_cbm("timeseries", "parcels", "12", "--card", "bs", "--png", str(only_bs))
    assert proc.returncode == 0, proc.stderr
    assert png_size(only_bs) == (ts_cmd.WIDTH_IN * ts_cmd.DPI, ts_cmd.PANEL_IN * ts_cmd.DPI)


def test_no_observations_is_an_empty_csv_and_exit_0(world, tmp_path):
    out, png = tmp_path / "none.csv", tmp_path / "none.png"
    proc = run_cbm("timeseries", "parcels", "13", "--csv", str(out), "--png", str(png))
    assert proc.returncode == 0, proc.stderr
    assert "no s2/bs/c6 observations of parcel 13" in proc.stderr
    assert out.read_text().splitlines() == [",".join(ts.COLUMNS)]
    assert png_size(png) == (ts_cmd.WIDTH_IN * ts_cmd.DPI, ts_cmd.PANEL_IN * ts_cmd.DPI)


@pytest.mark.parametrize("args, needles", [
    (("parcels", "11", "99", "--csv", "x.csv"), ("parcel 99", "not in public.parcels")),
    (("parcels", "98", "99", "--csv", "x.csv"), ("parcels 98, 99",)),
    (("nosuch", "11", "--csv", "x.csv"), ("parcel table public.nosuch does not exist",)),
    (("sigs", "11", "--csv", "x.csv"), ("one of CbM's own tables",)),
    (("parcels", "11"), ("--csv", "--png")),
    (("parcels", "11", "--csv", "x.csv", "--from", "2024-13-01"), ("2024-13-01", "YYYY-MM-DD")),
    (("parcels", "11", "--csv", "x.csv", "--from", "2024-05-01", "--to", "2024-04-01"), ("before --from",)),
    (("parcels", "11", "--csv", "x.csv", "--clear-threshold", "1.5"), ("--clear-threshold", "between 0 and 1")),
    (("parcels", "eleven", "--csv", "x.csv"), ("eleven",)),
    (("parcels", "11", "--csv", "/nonexistent/dir/x.csv"), ("--csv /nonexistent/dir/x.csv",)),
    (("parcels", "11", "--deployment", "nosuch/deployment.yml", "--csv", "x.csv"), ("nosuch/deployment.yml",)),
])
def test_bad_input_is_one_line(world, args, needles):
    proc = run_cbm("timeseries", *args)
    assert_one_line_error(proc, *needles, code=2)


def test_query_is_an_index_scan_on_pid(dbenv):
    """On a sigs of 4 * 10^5 rows (4000 parcels x 25 scenes x 4 bands) the plan reads sigs and hists
    through their pid indexes, never a sequential scan."""
    s = settings()
    with db.session(s) as conn, conn.cursor() as cur:
        schema.init_schema(conn, s)
        cur.execute("INSERT INTO dias_catalogue (obstime, reference, sensor, card)"
                    " SELECT timestamp '2024-03-01' + i * interval '5 days', 'S' || i, '2A', 's2'"
                    " FROM generate_series(1, 25) i")
        cur.execute("INSERT INTO sigs (pid, obsid, band, count, mean)"
                    " SELECT p, o, b, 10, 1000 FROM generate_series(1, 4000) p, generate_series(1, 25) o,"
                    " unnest(ARRAY['B02', 'B03', 'B04', 'B08']) b")
        cur.execute("INSERT INTO hists (pid, obsid, hist) SELECT p, o, '{\"4\": 10}'::json"
                    " FROM generate_series(1, 4000) p, generate_series(1, 25) o")
    with db.session(s) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ANALYZE")
            query, params = ts.series_query(s, [17, 3242], ("s2",), dt.date(2024, 3, 1), dt.date(2024, 9, 30))
            cur.execute(b"EXPLAIN (FORMAT JSON) " + query.as_string(conn).encode(), params)
            plan = cur.fetchone()[0][0]["Plan"]
            cur.execute("SELECT relname, reltuples FROM pg_class WHERE relkind = 'r'")
            rows = dict(cur.fetchall())
    scans = {}

    def conds(node):
        """The index conditions of a scan node and of the bitmap index scans under it."""
        own = [node["Index Cond"]] if "Index Cond" in node else []
        return own + [c for child in node.get("Plans", []) if child["Node Type"].startswith("Bitmap")
                      for c in conds(child)]

    def walk(node):
        if "Relation Name" in node:
            scans.setdefault(node["Relation Name"], []).append((node["Node Type"], conds(node)))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    for relation in ("sigs", "hists"):   # partitioned: one scan per partition (sigs_...); empty ones aside
        found = [scan for name, nodes in scans.items() if name.startswith(relation) and rows[name] > 1000
                 for scan in nodes]
        assert found, (relation, scans)
        for kind, cond in found:
            assert kind in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"), (relation, scans)
            assert any("pid = ANY" in c for c in cond), (relation, scans)


# -- the pure functions against plain reference arithmetic ---------------------------------------
@pytest.mark.parametrize("baseline, reference, offset", [
    (5.09, "", -1000), (4.0, "", -1000), (3.99, "", 0), (2.07, "", 0), (99.99, "", 0),
    (None, S2.format("20240415", "0400", "20240415"), -1000), (None, S2.format("20200415", "0214", "20200415"), 0),
    (None, "S1A_IW_GRDH_1SDV_X_CARD_BS", 0),
])
def test_boa_offset(baseline, reference, offset):
    assert ts.boa_offset(baseline, reference) == offset


def test_ndvi_db_and_clear_share_against_plain_formulas():
    rng = random.Random(5)
    for _ in range(200):
        red, nir = rng.uniform(1001, 6000), rng.uniform(1001, 6000)
        for offset in (0, -1000):
            r, n = (red + offset) / 10000, (nir + offset) / 10000
            assert ts.ndvi(red, nir, offset) == pytest.approx((n - r) / (n + r), rel=1e-12)
        v = rng.uniform(1e-4, 1.0)
        assert ts.to_db(v) == pytest.approx(10 * math.log10(v))
    assert ts.ndvi(500, 400, -1000) is None          # reflectances below 0: undefined
    assert ts.to_db(0) is None and ts.to_db(None) is None
    assert ts.clear_share({"4": 30, "5": 10, "6": 5, "9": 5}) == pytest.approx(45 / 50)
    assert ts.clear_share('{"0": 100, "9": 10}') == 0.0     # class 0 (no data) never counts
    assert ts.clear_share("{}") is None and ts.clear_share(None) is None
