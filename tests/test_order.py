"""`cbm order`: Sentinel-1 CARD products ordered from the On-Demand Production API, against the
recorded CDSE catalog replies and the local stand-ins of the catalog and of ODP (sandbox/odp.py)."""

from __future__ import annotations

import json
import os
import stat

import boto3
import pytest
import yaml
from rasterio.warp import transform_geom

from conftest import CDSE_REPLIES, assert_one_line_error, run_cbm
from extract_helpers import EPSG, N10, X0, Y0, extract_env, init_db, make_world
from extractor.odp import totp_code
from sandbox.catalog_replay import CatalogReplay, s1_feature, s1_input_feature
from sandbox.cdse import CdseStandIns
from sandbox.odp import OdpStandIn
from sandbox.s3 import EodataS3

GRD_REPLY = CDSE_REPLIES / "resto_sentinel1_iw_grd_two_timeliness.json"
NRT_3H, FAST_24H = "_0FCC.SAFE", "_4C69.SAFE"    # the two listings of one acquisition in GRD_REPLY
AOI = "SRID=4326;POLYGON((3.1 51.27, 3.3 51.27, 3.3 51.37, 3.1 51.37, 3.1 51.27))"
BOX = [[[3.0, 51.2], [3.4, 51.2], [3.4, 51.45], [3.0, 51.45], [3.0, 51.2]]]


@pytest.fixture
def db(dbenv):
    assert run_cbm("db", "init", env=dbenv).returncode == 0
    dbenv.query("INSERT INTO aois VALUES ('be', ST_GeomFromEWKT(%s))", (AOI,))
    return dbenv


def grds(n: int, day: int = 1, month: int = 5, kind: str = "GRD") -> list[dict]:
    """n acquisitions over the AOI in May 2023, one per day from `day`."""
    return [s1_input_feature(kind, f"2023{month:02d}{day + k:02d}T053000", BOX, orbit=48000 + k, datatake=f"05C{k:03X}",
                             unique=f"A{k:03X}") for k in range(n)]


def order(db, cat, odp, *args, env=None):
    full = {**db, "CBM_CATALOG_URL": cat.url, "CBM_CATALOG_BACKOFF": "0.01", "CBM_ODP_URL": odp.url,
            "CBM_ODP_TOKEN_URL": odp.token_url, "CBM_ODP_BACKOFF": "0.01", "CDSE_USERNAME": odp.username,
            "CDSE_PASSWORD": odp.password, **(env or {})}
    return run_cbm("order", *args, env=full)


def s1(db, cat, odp, *args, card="bs", start="2023-05-01", end="2023-05-31", env=None):
    return order(db, cat, odp, "s1", "be", start, end, "--card", card, *args, env=env)


def rows(db, *cols):
    return db.query(f"SELECT {', '.join(cols or ('input', 'status'))} FROM s1_orders ORDER BY id")


@pytest.fixture
def stand_ins():
    """A catalog of 5 GRD acquisitions and an ODP stand-in that knows it (its orders take an hour)."""
    with CatalogReplay(features={"Sentinel1": grds(5)}) as cat, OdpStandIn(catalog=cat, delay=3600) as odp:
        yield cat, odp


# -- what to order -----------------------------------------------------------------------------
@pytest.mark.parametrize("year,kept,dropped", [(2020, FAST_24H, NRT_3H), (2021, NRT_3H, FAST_24H)])
def test_dry_run_keeps_one_timeliness_per_acquisition(db, year, kept, dropped):
    raw = GRD_REPLY.read_bytes()
    if year == 2021:   # derived from the recorded reply (tests/data/cdse/README.md)
        for old, new in ((b"2020-06-06", b"2021-06-06"), (b"20200606", b"20210606"), (b"2020/06/06", b"2021/06/06")):
            raw = raw.replace(old, new)
    day = f"{year}-06-06"
    with CatalogReplay(recorded={("Sentinel1", 1): raw}) as cat:
        env = {**db, "CBM_CATALOG_URL": cat.url}     # no ODP account: a dry run needs none
        proc = run_cbm("order", "s1", "be", day, day, "--card", "bs", "--dry-run", env=env)
        assert proc.returncode == 0, proc.stderr
        names = proc.stdout.split()
        assert len(names) == 1 and names[0].endswith(kept) and dropped not in proc.stdout
        assert "found 1 (1 other-timeliness duplicates dropped), existing 0, already ordered 0, to order 1" in proc.stderr
        asked = cat.requests[0]
        assert (asked["productType"], asked["sensorMode"], asked["startDate"][:10]) == ("GRD", "IW", day)
        # its CARD-BS product synced since: nothing left to order
        product = names[0].removesuffix(".SAFE") + "_CARD_BS"
        db.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card) VALUES (%s, %s, '1B', 'bs')",
                 (f"{day} 06:06:15", product))
        again = run_cbm("order", "s1", "be", day, day, "--card", "bs", "--dry-run", env=env)
        assert again.returncode == 0 and again.stdout == ""
        assert "found 1 (1 other-timeliness duplicates dropped), existing 1, already ordered 0, to order 0" in again.stderr
    assert rows(db) == []


def test_dry_run_counts_existing_and_ordered(db):
    inputs = grds(6)
    twin = s1_input_feature("GRD", "20230501T053003", BOX, orbit=48000, datatake="05C000", unique="FFFF",
                            timeliness="Fast-24h")          # the first acquisition again, other timeliness
    name = [f["properties"]["title"] for f in inputs]
    product = [n.removesuffix(".SAFE") + "_CARD_BS" for n in name]
    card_at_cdse = s1_feature("bs", "20230502T053000", BOX)
    card_at_cdse["properties"]["title"] = product[1]         # made before, not yet synced
    db.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card) VALUES ('2023-05-03', %s, '1A', 'bs')",
             (product[2],))
    for k, status in ((3, "queued"), (4, "failed")):
        db.query("INSERT INTO s1_orders (input, product, card, workflow, obstime, batch_label, batch_id, status)"
                 " VALUES (%s, %s, 'bs', 'card_bs', '2023-05-04', 'x', '1', %s)", (name[k], product[k], status))
    with CatalogReplay(features={"Sentinel1": [*inputs, twin, card_at_cdse]}) as cat:
        env = {**db, "CBM_CATALOG_URL": cat.url}
        proc = run_cbm("order", "s1", "be", "2023-05-01", "2023-05-31", "--card", "bs", "--dry-run", env=env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [name[0], name[5]]
        assert "found 6 (1 other-timeliness duplicates dropped), existing 2, already ordered 2, to order 2" in proc.stderr
        retry = run_cbm("order", "s1", "be", "2023-05-01", "2023-05-31", "--card", "bs", "--dry-run", "--retry-failed",
                        "--max", "2", env=env)
        assert retry.returncode == 0, retry.stderr
        assert retry.stdout.split() == [name[0], name[4]]
        assert "already ordered 1, to order 3; --max 2: 2 listed" in retry.stderr
        slc = run_cbm("order", "s1", "be", "2023-05-01", "2023-05-31", "--card", "c6", "--dry-run", env=env)
        assert slc.returncode == 0 and slc.stdout == "" and "SLC inputs of c6" in slc.stderr
        assert cat.requests[-2]["productType"] == "SLC"


# -- ordering ----------------------------------------------------------------------------------
def test_order_once_and_a_rerun_orders_nothing_new(db, stand_ins):
    cat, odp = stand_ins
    proc = s1(db, cat, odp, "--max", "3", "-vv", env={"CBM_ODP_BATCH_SIZE": "2"})
    assert proc.returncode == 0, proc.stderr
    assert "ordered 3 in 2 batch order(s)" in proc.stdout and "2 left by --max" in proc.stdout
    assert len(odp.orders) == 3 and len(odp.batches) == 2
    assert [r[1] for r in rows(db)] == ["queued"] * 3
    assert all(r[0] for r in rows(db, "batch_id"))
    for secret in (odp.password, *odp.issued):      # never in the output, not even with -vv
        assert secret not in proc.stdout + proc.stderr
    again = s1(db, cat, odp)
    assert again.returncode == 0, again.stderr
    assert "already ordered 3, to order 2" in again.stdout and "ordered 2 in 1 batch order(s)" in again.stdout
    last = s1(db, cat, odp)
    assert last.returncode == 0 and "already ordered 5, to order 0" in last.stdout and "nothing to order" in last.stdout
    assert len(odp.orders) == 5 and len(rows(db)) == 5
    assert sorted(o["InputProductReference"]["Reference"] for o in odp.orders.values()) == sorted(r[0] for r in rows(db))


@pytest.mark.parametrize("how", ["expired mid-run", "short-lived"])
def test_tokens_are_renewed(db, stand_ins, how):
    cat, odp = stand_ins
    if how == "expired mid-run":
        odp.inject("expire", after=2)           # GET Workflows, POST batch 1, then the tokens expire
    else:
        odp.token_lifetime = 30                 # less than the client's margin: renewed before each request
    proc = s1(db, cat, odp, env={"CBM_ODP_BATCH_SIZE": "2"})
    assert proc.returncode == 0, proc.stderr
    assert "ordered 5 in 3 batch order(s)" in proc.stdout and len(odp.batches) == 3
    assert odp.grants["password"] == 1 and odp.grants["refresh_token"] >= 1
    assert sum(status == 401 for _, _, status in odp.log) == (1 if how == "expired mid-run" else 0)


def test_rate_limit_is_retried(db, stand_ins):
    cat, odp = stand_ins
    odp.inject("429", count=2, after=1)
    proc = s1(db, cat, odp)
    assert proc.returncode == 0, proc.stderr
    assert [s for m, _, s in odp.log if m == "POST" and s != 200] == [429, 429, 201]
    assert len(odp.orders) == 5


def test_quota_refusal_stops_and_a_rerun_resumes(db, stand_ins):
    cat, odp = stand_ins
    odp.quota = 3
    proc = s1(db, cat, odp, env={"CBM_ODP_BATCH_SIZE": "2"})
    err = assert_one_line_error(proc, "Quota exceeded", "3 ordered in this run, 2 not ordered",
                                "cbm order s1 be 2023-05-01 2023-05-31 --card bs", code=1)
    assert "HTTP 403" in err
    assert [r[1] for r in rows(db)] == ["queued"] * 3 and len(odp.orders) == 3
    odp.quota = 25                              # a new month
    again = s1(db, cat, odp)
    assert again.returncode == 0, again.stderr
    assert "already ordered 3, to order 2" in again.stdout
    assert len(odp.orders) == 5 and len(rows(db)) == 5


def test_validation_error_stops_and_leaves_nothing_behind(db, stand_ins):
    cat, odp = stand_ins
    odp.inject("422", after=1)
    proc = s1(db, cat, odp)
    assert_one_line_error(proc, "HTTP 422", "injected validation error", "0 ordered in this run, 5 not ordered", code=1)
    assert rows(db) == [] and odp.orders == {}


def test_a_lost_answer_is_looked_up_not_ordered_again(db, stand_ins):
    cat, odp = stand_ins
    odp.inject("cut", after=1)                  # the batch is taken, its answer lost
    proc = s1(db, cat, odp)
    assert proc.returncode == 0, proc.stderr
    assert len(odp.batches) == 1 and len(odp.orders) == 5
    assert {r[0] for r in rows(db, "batch_id")} == {str(next(iter(odp.batches)))}
    assert "to order 0" in s1(db, cat, odp).stdout and len(odp.batches) == 1


def test_a_run_that_died_while_sending_is_resolved(db, stand_ins):
    cat, odp = stand_ins
    taken = grds(5)[0]["properties"]["title"]
    assert odp.create_batch({"Name": "cbm-bs-died", "WorkflowName": "card_bs", "IdentifierList": [taken]})[0] == 201
    for label, name in (("cbm-bs-died", taken), ("cbm-bs-never-sent", grds(5)[1]["properties"]["title"])):
        db.query("INSERT INTO s1_orders (input, product, card, workflow, obstime, batch_label, updated_at)"
                 " VALUES (%s, 'p', 'bs', 'card_bs', '2023-05-01', %s, now() - interval '1 hour')", (name, label))
    proc = s1(db, cat, odp)
    assert proc.returncode == 0, proc.stderr
    assert "already ordered 1, to order 4" in proc.stdout           # adopted; the other one dropped
    assert len(odp.orders) == 5 and len(rows(db)) == 5


def test_failed_order_is_shown_and_can_be_ordered_again(db):
    inputs = grds(2)
    bad = inputs[1]["properties"]["title"]
    with CatalogReplay(features={"Sentinel1": inputs}) as cat, OdpStandIn(catalog=cat) as odp:
        odp.fail_next({bad: "Processing failed: precise orbit file not available"})
        assert s1(db, cat, odp).returncode == 0
        odp.finish()
        proc = order(db, cat, odp, "status", "--refresh")
        assert proc.returncode == 0, proc.stderr
        assert "1 now completed, 1 now failed" in proc.stdout
        assert f"{bad} (bs) at " in proc.stdout and "precise orbit file not available" in proc.stdout
        assert "existing 1, already ordered 1, to order 0" in s1(db, cat, odp).stdout   # made, and failed
        again = s1(db, cat, odp, "--retry-failed")
        assert again.returncode == 0 and "to order 1" in again.stdout and "ordered 1 in 1" in again.stdout
        odp.finish()
        done = order(db, cat, odp, "status", "--refresh")
        assert "1 now completed" in done.stdout and "failed" not in done.stdout
        assert sorted(r[1] for r in rows(db)) == ["completed", "completed", "failed"]   # the history is kept


def test_slow_orders_waiting_then_cancel(db, stand_ins):
    cat, odp = stand_ins
    odp.delay = 3 * 3600                        # an order takes hours; at most 2 run at once
    assert s1(db, cat, odp, "--max", "3").returncode == 0
    proc = order(db, cat, odp, "status", "--refresh")
    assert "2 now in_progress" in proc.stdout and "oldest waiting:" in proc.stdout
    waiting = proc.stdout.split("oldest waiting:")[1].splitlines()[1:4]
    assert [line.split()[0] for line in waiting] == [r[0] for r in rows(db)]
    assert_one_line_error(order(db, cat, odp, "cancel"), "--all", code=2)
    cancel = order(db, cat, odp, "cancel", "--all")
    assert cancel.returncode == 0, cancel.stderr
    assert "3 waiting order(s): 1 cancelled, 2 already in production (they complete)" in cancel.stdout
    odp.advance(3 * 3600)
    done = order(db, cat, odp, "status", "--refresh")
    assert "2 now completed" in done.stdout
    assert sorted(r[1] for r in rows(db)) == ["cancelled", "completed", "completed"]


# -- credentials -------------------------------------------------------------------------------
def test_credentials_file_totp_and_refusals(db, tmp_path):
    seed = "JBSWY3DPEHPK3PXP"
    assert totp_code("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", at=59) == "287082"   # RFC 6238, SHA-1, 6 digits
    with CatalogReplay(features={"Sentinel1": grds(1)}) as cat, OdpStandIn(catalog=cat, totp_secret=seed) as odp:
        creds = tmp_path / "cdse.yml"
        creds.write_text(f"username: {odp.username}\npassword: {odp.password}\ntotp_secret: {seed}\n")
        os.chmod(creds, 0o644)
        base = {"CDSE_USERNAME": "", "CDSE_PASSWORD": "", "CBM_ODP_CREDENTIALS_FILE": str(creds)}
        assert_one_line_error(s1(db, cat, odp, env=base), "chmod 600", code=2)
        os.chmod(creds, stat.S_IRUSR | stat.S_IWUSR)
        wrong = s1(db, cat, odp, env={**base, "CDSE_TOTP_SECRET": "GEZDGNBVGY3TQOJQ"})   # the variable wins
        err = assert_one_line_error(wrong, "CDSE login refused", odp.username, code=2)
        assert odp.password not in err and rows(db) == []
        proc = s1(db, cat, odp, env=base)
        assert proc.returncode == 0, proc.stderr
        assert len(odp.orders) == 1 and odp.grants["password"] == 1
        none = s1(db, cat, odp, env={"CDSE_USERNAME": "", "CDSE_PASSWORD": ""})
        assert_one_line_error(none, "CDSE_USERNAME", "odp.credentials_file", code=2)


# -- the chain: ordered -> produced -> synced -> extracted ---------------------------------------
@pytest.mark.parametrize("card,kind,res", [("bs", "GRD", "10"), ("c6", "SLC", "20")])
def test_ordered_products_are_synced_and_extracted(dbenv, tmp_path, card, kind, res):
    world = make_world(tmp_path / "eodata", with_s1=False, with_empty=False)
    init_db(dbenv, world)
    ring = transform_geom(f"EPSG:{EPSG}", "EPSG:4326", {"type": "Polygon", "coordinates": [[
        [X0 - 50, Y0 + 50], [X0 + N10 * 10 + 50, Y0 + 50], [X0 + N10 * 10 + 50, Y0 - N10 * 10 - 50],
        [X0 - 50, Y0 - N10 * 10 - 50], [X0 - 50, Y0 + 50]]]})["coordinates"]
    inputs = [s1_input_feature(kind, f"2024030{d}T054009", ring, orbit=52000 + d, datatake=f"06{d:04X}",
                               unique=f"B{d:03X}") for d in (2, 8)]
    with CatalogReplay(features={"Sentinel1": list(inputs)}) as cat, OdpStandIn(catalog=cat, eodata=world.root) as odp:
        env = {**extract_env(dbenv, world), "CBM_CATALOG_URL": cat.url, "CBM_ODP_URL": odp.url,
               "CBM_ODP_TOKEN_URL": odp.token_url, "CDSE_USERNAME": odp.username, "CDSE_PASSWORD": odp.password}
        proc = run_cbm("order", "s1", "site", "2024-03-01", "2024-03-10", "--card", card, env=env)
        assert proc.returncode == 0, proc.stderr
        odp.finish()
        status = run_cbm("order", "status", "--refresh", env=env)
        assert "2 now completed" in status.stdout, status.stdout
        assert f"{card}: 2 completed, 0 in dias_catalogue, 0 extracted; bring the others in with: " \
               f"cbm catalog sync site 2024-03-02 2024-03-08 {card}" in status.stdout
        sync = run_cbm("catalog", "sync", "site", "2024-03-02", "2024-03-08", card, env=env)
        assert sync.returncode == 0 and "2 new" in sync.stdout, sync.stdout + sync.stderr
        paths = dict(dbenv.query("SELECT reference, product_path FROM dias_catalogue WHERE card = %s", (card,)))
        suffix = {"bs": "_CARD_BS", "c6": "_CARD_COH6"}[card]
        assert sorted(paths) == sorted(f["properties"]["title"].removesuffix(".SAFE") + suffix for f in inputs)
        assert all((world.root / p.removeprefix("/eodata/")).is_dir() for p in paths.values())
        run = run_cbm("extract", "run", "--card", card, "--res", res, env=env)
        assert run.returncode == 0, run.stderr
    extracted = dbenv.query("SELECT c.reference, count(s.*) FROM dias_catalogue c JOIN sigs s ON s.obsid = c.id"
                            " WHERE c.card = %s AND c.status = 'extracted' GROUP BY 1", (card,))
    assert sorted(r[0] for r in extracted) == sorted(paths) and all(n > 0 for _, n in extracted)
    after = run_cbm("order", "status", env=env)
    assert f"{card}: 2 completed, 2 in dias_catalogue, 2 extracted" in after.stdout


def test_the_sandbox_serves_the_stand_ins(db, tmp_path):
    """The process `cbm sandbox start` runs (sandbox/cdse.py): catalog + ODP over an eodata folder."""
    eodata = tmp_path / "eodata"
    eodata.mkdir()
    small = [[[3.15, 51.30], [3.20, 51.30], [3.20, 51.33], [3.15, 51.33], [3.15, 51.30]]]
    grd = s1_input_feature("GRD", "20230510T053000", small)
    (eodata / "catalog.json").write_text(json.dumps({"Sentinel1": [grd]}))   # as the rehearsal writes it
    s3 = EodataS3(tmp_path / "state", eodata, host="127.0.0.1").start(timeout=60)   # the sandbox's S3 too
    cdse = CdseStandIns(tmp_path / "state", eodata).start()
    try:
        assert stat.S_IMODE(cdse.credentials_file.stat().st_mode) == 0o600
        env = {**db, **cdse.env, "CBM_EODATA_SOURCE": "folder", "CBM_EODATA_ROOT": str(eodata)}
        proc = run_cbm("order", "s1", "be", "2023-05-01", "2023-05-31", "--card", "bs", env=env)
        assert proc.returncode == 0 and "ordered 1 in 1 batch order(s)" in proc.stdout, proc.stdout + proc.stderr
        assert "1 now in_progress" in run_cbm("order", "status", "--refresh", env=env).stdout   # it takes a minute
        cdse.stop()
        cdse.start()                                # the orders outlive a restart
        assert cdse.steer("finish")["counts"] == {"completed": 1}
        done = run_cbm("order", "status", "--refresh", env=env)
        assert "1 now completed" in done.stdout, done.stdout + done.stderr
        sync = run_cbm("catalog", "sync", "be", "2023-05-01", "2023-05-31", "bs", env=env)
        assert sync.returncode == 0 and "1 new" in sync.stdout, sync.stdout + sync.stderr
        (path,) = db.query("SELECT product_path FROM dias_catalogue")[0]
        ref = grd["properties"]["title"].removesuffix(".SAFE") + "_CARD_BS"
        assert path == f"/eodata/Sentinel-1/SAR/CARD-BS/2023/05/10/{ref}"
        key = f"{path.removeprefix('/eodata/')}/{ref}.data/Gamma0_VV.img"
        assert (eodata / key).is_file()
        creds = yaml.safe_load(s3.credentials_file.read_text())
        bucket = boto3.client("s3", endpoint_url=s3.endpoint(), region_name="us-east-1",
                              aws_access_key_id=creds["access_key"], aws_secret_access_key=creds["secret_key"])
        assert bucket.head_object(Bucket="eodata", Key=key)["ContentLength"] == (eodata / key).stat().st_size
    finally:
        cdse.purge()
        s3.purge()
    assert not cdse.running and not cdse.credentials_file.exists()
