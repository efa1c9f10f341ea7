"""Where workers read the products (extractor/extract/storage.py), with real workers, a real PostGIS
and a real S3 server (sandbox/s3.py: moto, enforced access keys) serving the same eodata folder.

Covered:
  * S3 and folder give the same results: S2 runs -1 (SCL histograms), 10 and 20, CARD-BS and
    CARD-COH6 extracted once from S3 (the image's worker, `python -m extractor.extract run`) and
    once from the folder (`cbm extract run`, another database); every sigs and hists row (scene by
    reference, parcel, band, all statistics) and every run status and row count are equal.
  * `cbm extract run` reads S3 too (it loads more of the project than the image's worker).
  * A worker's start check, one line, non-zero exit, nothing claimed, through both `cbm extract
    run` and `python -m extractor.extract run`: S3 keys refused, an S3 endpoint that does not
    answer (a closed local port), an empty folder, a folder that is not a mount point for
    source=mount, a credentials file others can read (the chmod fix, never the secret).
  * The S3 server stopped in the middle of a run of two workers (sigs writes are held on an
    advisory lock until then, so the run cannot be over first): the scenes are given back
    (storage_faults, no attempt used, no final status), the workers wait, and once the server is
    back (new keys, re-read from the credentials file) they finish: every scene extracted once,
    results equal to the undisturbed folder run.
  * A band file really missing from the bucket is still final ('No band file'); the other scenes
    are extracted.
  * A storage that hangs (a proxy in front of the server that accepts and never answers the
    requests of one product): the worker gives the scene back at extract.scene_timeout (the attempt
    counts) and exits 1 with one line, long before GDAL's own timeouts; a new worker extracts it.
  * A lease stolen while the worker hangs in a read (the worker frozen past its lease, another
    worker takes the scene over and extracts it): the first worker, thawed, drops the scene while
    its read still hangs, writes nothing and goes on; the scene is done once.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import DbEnv, assert_one_line_error, run_cbm, wait_for
from extract_helpers import EPSG, N10, X0, Y0, Scene, World, extract_env, init_db, make_world, s2_bands
from sandbox import synthetic
from sandbox.s3 import EodataS3

S2_DATES = tuple(dt.datetime(2024, 7, 1, 10, 30, 31) + dt.timedelta(days=3 * i) for i in range(10))
MISSING_DATE = dt.datetime(2024, 9, 1, 10, 30, 31)   # the product whose B08 never reaches the bucket
RUNS = (("s2", -1), ("s2", 10), ("s2", 20), ("bs", 10), ("c6", 20))
BANDS = {("s2", 10): ("B02", "B03", "B04", "B08"), ("s2", 20): ("B05", "B06", "B07", "B8A", "B11", "B12"),
         ("bs", 10): ("VVb", "VHb"), ("c6", 20): ("VVc", "VHc"), ("s2", -1): ()}
FINAL = ("No band file", "Rio error", "Max attempts", "Parcel SQL")
LOCK = 535353


# -- the world, its bucket and an undisturbed folder run ------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """10 S2 dates, one CARD-BS and one CARD-COH6 product; plus (not catalogued by make_world) an S2
    product without its B08 file, so that file is never uploaded to the bucket."""
    w = make_world(tmp_path_factory.mktemp("eodata"), s2_dates=S2_DATES, with_s1=True, with_empty=False)
    b10, b20 = s2_bands(300)
    path = synthetic.write_s2(w.root, MISSING_DATE, "31UFS", EPSG, X0, Y0, b10, b20)
    next((w.root / path[len("/eodata/"):]).rglob("*_B08_10m.jp2")).unlink()
    w.missing = Scene("s2", path.rsplit("/", 1)[1], MISSING_DATE, path, (X0, Y0 - N10 * 10, X0 + N10 * 10, Y0),
                      EPSG, "31UFS")
    return w


@pytest.fixture(scope="module")
def s3(world, tmp_path_factory):
    server = EodataS3(tmp_path_factory.mktemp("s3"), world.root, host="127.0.0.1").start(timeout=60)
    yield server
    server.purge()


@pytest.fixture(scope="module")
def folder_results(postgis, world, tmp_path_factory):
    """Every run of the world extracted from the folder, in a database of its own (the reference)."""
    name = f"t{os.getpid()}_storage_ref"
    postgis.psql(f"CREATE DATABASE {name} TEMPLATE cbm_template")
    # as dbenv does: keep the user's own settings out
    ref = DbEnv({**postgis.env(name), "XDG_CONFIG_HOME": str(tmp_path_factory.mktemp("xdg")), "CBM_CONFIG": ""},
                name)
    try:
        init_db(ref, world)
        env = extract_env(ref, world)
        for card, res in RUNS:
            proc = run_cbm("extract", "run", "--card", card, "--res", str(res), env=env)
            assert proc.returncode == 0, proc.stderr
        yield results(ref)
    finally:
        postgis.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- helpers ---------------------------------------------------------------------------------------
def s3_env(dbenv, world, s3: EodataS3, credentials=None, endpoint=None, **extract) -> dict:
    return {**extract_env(dbenv, world, **extract), "CBM_EODATA_SOURCE": "s3",
            "CBM_S3_ENDPOINT": endpoint or s3.endpoint(),
            "CBM_S3_CREDENTIALS_FILE": str(credentials or s3.credentials_file)}


def results(db) -> dict:
    """Everything the runs wrote, scenes named by reference (obsids differ between databases)."""
    return {
        "sigs": sorted(db.query(
            "SELECT c.reference, s.pid, trim(s.band), s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75"
            " FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid")),
        "hists": sorted(db.query("SELECT c.reference, h.pid, h.hist::jsonb::text FROM hists h"
                                 " JOIN dias_catalogue c ON c.id = h.obsid")),
        "runs": sorted(db.query("SELECT c.reference, trim(c.card), r.res, r.status, r.rows FROM extraction_runs r"
                                " JOIN dias_catalogue c ON c.id = r.obsid")),
    }


def only(full: dict, runs, refs=None) -> dict:
    """The rows of some runs (and some scenes) out of results()."""
    bands = {b for r in runs for b in BANDS[r]}
    keep = (lambda ref: True) if refs is None else (lambda ref: ref in refs)
    return {"sigs": [r for r in full["sigs"] if r[2] in bands and keep(r[0])],
            "hists": [r for r in full["hists"] if ("s2", -1) in runs and keep(r[0])],
            "runs": [r for r in full["runs"] if (r[1], r[2]) in runs and keep(r[0])]}


IMAGE = (sys.executable, "-m", "extractor.extract")   # the extractor image's entry point (swarm replicas)
CBM = (sys.executable, "-m", "cbm")                    # the user's command


def run_worker(env: dict, card: str, res: int, entry=IMAGE, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*entry, *(("extract",) if entry == CBM else ()), "run", "--card", card, "--res", str(res),
                           *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def start_worker(env: dict, card: str, res: int, log: Path) -> subprocess.Popen:
    """A worker in the background, as a swarm replica runs it; output to log.out / log.err."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen([*IMAGE, "run", "--card", card, "--res", str(res)], env={**os.environ, **env},
                                stdout=out, stderr=err, text=True)


def nothing_claimed(dbenv) -> None:
    assert dbenv.query("SELECT count(*) FROM extraction_runs") == [(0,)]
    assert dbenv.query("SELECT DISTINCT status FROM dias_catalogue") == [("ingested",)]
    assert dbenv.query("SELECT (SELECT count(*) FROM sigs) + (SELECT count(*) FROM hists)") == [(0,)]


def write_credentials(path: Path, mode: int, access_key: str, secret_key: str) -> Path:
    path.write_text(yaml.safe_dump({"access_key": access_key, "secret_key": secret_key}))
    path.chmod(mode)
    return path


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. S3 and folder give the same rows ----------------------------------------------------------
def test_s3_and_folder_give_identical_results(dbenv, world, s3, folder_results):
    init_db(dbenv, world)
    env = s3_env(dbenv, world, s3)
    for card, res in RUNS:
        proc = run_worker(env, card, res)
        assert proc.returncode == 0, proc.stderr
        assert f"products from S3 bucket eodata at {s3.endpoint()}" in proc.stdout
    got = results(dbenv)
    # every run of every scene extracted, nothing given back, one attempt each
    assert {r[3] for r in got["runs"]} == {"extracted"}
    assert len(got["runs"]) == 3 * len(S2_DATES) + 2     # s2: -1, 10, 20; one bs and one c6 scene
    assert dbenv.query("SELECT DISTINCT attempts, storage_faults FROM extraction_runs") == [(1, 0)]
    assert got["sigs"] and got["hists"]
    for what in ("runs", "sigs", "hists"):
        assert got[what] == folder_results[what], what


def test_cbm_extract_run_reads_s3(dbenv, world, s3, folder_results):
    """The same through the user's command, `cbm extract run` (which loads more of the project:
    e.g. pyogrio's own libgdal next to rasterio's)."""
    good = [s for s in world.scenes if s.card == "s2"][:2]
    init_db(dbenv, World(world.root, good))
    proc = run_worker(s3_env(dbenv, world, s3), "s2", 10, CBM)
    assert proc.returncode == 0, proc.stderr
    refs = {s.reference for s in good}
    got = only(results(dbenv), [("s2", 10)], refs)
    assert {r[3] for r in got["runs"]} == {"extracted"} and len(got["runs"]) == len(good)
    assert got == only(folder_results, [("s2", 10)], refs)


# -- 2. the start check: one line, nothing claimed ------------------------------------------------
def _wrong_keys(dbenv, world, s3, tmp_path):
    secret = "wrong-secret-0123456789"
    creds = write_credentials(tmp_path / "wrong.yml", 0o600, "AKIAWRONGWRONGWRONG1", secret)
    return s3_env(dbenv, world, s3, credentials=creds), ("access keys", "s3.credentials_file"), secret


def _no_answer(dbenv, world, s3, tmp_path):
    return s3_env(dbenv, world, s3, endpoint=f"http://127.0.0.1:{closed_port()}"), ("does not answer",), None


def _empty_folder(dbenv, world, s3, tmp_path):
    (tmp_path / "empty").mkdir()
    return {**extract_env(dbenv, world), "CBM_EODATA_ROOT": str(tmp_path / "empty")}, ("empty",), None


def _not_mounted(dbenv, world, s3, tmp_path):
    return {**extract_env(dbenv, world), "CBM_EODATA_SOURCE": "mount"}, ("not a mount point",), None


def _readable_credentials(dbenv, world, s3, tmp_path):
    doc = yaml.safe_load(s3.credentials_file.read_text())
    creds = write_credentials(tmp_path / "open.yml", 0o644, doc["access_key"], doc["secret_key"])
    return s3_env(dbenv, world, s3, credentials=creds), ("chmod 600", str(creds)), doc["secret_key"]


@pytest.mark.parametrize("case", [_wrong_keys, _no_answer, _empty_folder, _not_mounted, _readable_credentials],
                         ids=["wrong-keys", "endpoint-down", "empty-folder", "not-a-mount", "credentials-0644"])
def test_storage_check_at_start_is_one_line_and_claims_nothing(dbenv, world, s3, tmp_path, case):
    init_db(dbenv, world)
    env, needles, secret = case(dbenv, world, s3, tmp_path)
    for entry in (CBM, IMAGE):
        proc = run_worker(env, "s2", 10, entry)
        try:
            assert_one_line_error(proc, *needles)
        except AssertionError as exc:
            command = "cbm extract run" if entry == CBM else "python -m extractor.extract run"
            raise AssertionError(f"{command}: {exc}") from None
        if secret:
            assert secret not in proc.stderr + proc.stdout
        assert "no scene left" not in proc.stdout
        nothing_claimed(dbenv)


# -- 3. the S3 server stops in the middle of a run ------------------------------------------------
def hold_sigs_writes(holder) -> None:
    """A worker's COPY into sigs waits (after reading its scene, before committing) while `holder`
    holds an advisory lock: the run cannot be over before the server is stopped."""
    with holder.cursor() as cur:
        cur.execute("CREATE FUNCTION hold_copy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                    f" PERFORM pg_advisory_lock({LOCK}); PERFORM pg_advisory_unlock({LOCK}); RETURN NULL; END $$")
        cur.execute("CREATE TRIGGER hold_copy AFTER INSERT ON sigs FOR EACH STATEMENT EXECUTE FUNCTION hold_copy()")
        cur.execute("SELECT pg_advisory_lock(%s)", (LOCK,))


def copy_waiting(dbenv) -> bool:
    return bool(dbenv.query("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND wait_event = 'advisory' AND query LIKE 'COPY%%'"))


def outage_and_back(dbenv, s3: EodataS3, holder, workers, tmp_path) -> list[str]:
    """Stop the server once the workers are busy, check the scenes wait, start it again; the
    workers' outputs once they are done."""
    old_keys = s3.credentials_file.read_text()
    try:
        wait_for(lambda: copy_waiting(dbenv), what="a worker to have read a scene from S3")
        s3.stop()
        with holder.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (LOCK,))
        wait_for(lambda: dbenv.query("SELECT count(*) FROM extraction_runs WHERE status = 'extracted'")[0][0] >= 1,
                 what="a scene read before the outage to be extracted")
        wait_for(lambda: dbenv.query("SELECT coalesce(sum(storage_faults), 0) FROM extraction_runs")[0][0] > 0,
                 timeout=120, what="a worker to give a scene back")
        during = dict(dbenv.query("SELECT status, count(*) FROM extraction_runs GROUP BY status"))
        assert not set(during) & set(FINAL), during
        assert dbenv.query("SELECT count(*) FROM dias_catalogue WHERE status = ANY(%s)", (list(FINAL),)) == [(0,)]
        assert during.get("extracted", 0) < len(S2_DATES), during
        assert [w.poll() for w in workers] == [None, None], "a worker exited instead of waiting for the storage"
    finally:
        s3.start(timeout=60)   # the stand-in answers 503 to the probing workers until its bucket is whole
    assert s3.credentials_file.read_text() != old_keys
    outs = []
    for i, w in enumerate(workers):
        assert w.wait(timeout=180) == 0, (tmp_path / f"worker{i}.err").read_text()
        outs.append((tmp_path / f"worker{i}.out").read_text())
    return outs


def test_s3_server_stopped_mid_run(dbenv, world, s3, folder_results, tmp_path):
    init_db(dbenv, world)
    env = s3_env(dbenv, world, s3, backoff=0.2, poll=0.2, lease=30)
    holder = dbenv.conn()
    hold_sigs_writes(holder)
    workers = [start_worker(env, "s2", 10, tmp_path / f"worker{i}") for i in range(2)]
    try:
        outs = outage_and_back(dbenv, s3, holder, workers, tmp_path)
    finally:
        holder.close()
        for w in workers:   # a failed test must not leave workers waiting for the storage
            if w.poll() is None:
                w.kill()
                w.wait()
    text = "\n".join(outs)
    assert "given back, the storage did not answer" in text and "answers again" in text, text

    got = results(dbenv)
    assert {r[3] for r in got["runs"]} == {"extracted"}
    assert len(got["runs"]) == len(S2_DATES)
    assert got == only(folder_results, [("s2", 10)])
    # given back, never counted as an attempt; every scene written once
    assert dbenv.query("SELECT DISTINCT attempts FROM extraction_runs") == [(1,)]
    assert dbenv.query("SELECT sum(storage_faults) > 0 FROM extraction_runs") == [(True,)]
    assert dbenv.query("SELECT count(*) = count(DISTINCT (obsid, pid, band)) FROM sigs") == [(True,)]
    processed = [line.split()[1] for line in text.splitlines() if line.startswith("scene ") and ": extracted" in line]
    assert len(processed) == len(set(processed)) == len(S2_DATES)


# -- 4. a band file really missing from the bucket is final ---------------------------------------
def test_band_missing_from_bucket_is_final(dbenv, world, s3, folder_results):
    good = [s for s in world.scenes if s.card == "s2"][:3]
    init_db(dbenv, World(world.root, [*good, world.missing]))
    proc = run_worker(s3_env(dbenv, world, s3, backoff=0.2), "s2", 10)
    assert proc.returncode == 0, proc.stderr
    status, detail, cat, faults, attempts = dbenv.query(
        "SELECT r.status, r.detail, c.status, r.storage_faults, r.attempts FROM extraction_runs r"
        " JOIN dias_catalogue c ON c.id = r.obsid WHERE c.reference = %s", (world.missing.reference,))[0]
    assert (status, cat, faults, attempts) == ("No band file", "No band file", 0, 1)
    assert "B08" in detail and "/vsis3/eodata/" in detail
    assert dbenv.query("SELECT count(*) FROM sigs s JOIN dias_catalogue c ON c.id = s.obsid"
                       " WHERE c.reference = %s", (world.missing.reference,)) == [(0,)]
    refs = {s.reference for s in good}
    got = only(results(dbenv), [("s2", 10)], refs)
    assert {r[3] for r in got["runs"]} == {"extracted"} and len(got["runs"]) == len(good)
    assert got == only(folder_results, [("s2", 10)], refs)


# -- 5. a storage that hangs; a lease stolen during a hung read ------------------------------------
class HangingProxy:
    """A TCP proxy in front of the S3 server. While `hang` is set, a request that names it (the
    product's folder name, in a listing's prefix or an object's key) is not passed on: its
    connection stays open and nothing ever comes back, as from a hung server."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.hang: bytes | None = None
        self.hung: list[socket.socket] = []
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while data := src.recv(65536):
                if requests and self.hang and self.hang in data:
                    self.hung.append(src)
                    return  # never passed on, never answered
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for s in [self.server, *self.sockets]:
            s.close()


@pytest.fixture
def proxy(s3):
    p = HangingProxy(s3.port)
    yield p
    p.close()


def product_name(scene: Scene) -> bytes:
    return scene.path.rstrip("/").rsplit("/", 1)[1].removesuffix(".SAFE").encode()


def test_hung_storage_ends_the_scene_at_scene_timeout(dbenv, world, s3, proxy, folder_results):
    scene = [s for s in world.scenes if s.card == "s2"][0]
    init_db(dbenv, World(world.root, [scene]))
    proxy.hang = product_name(scene)
    t0 = time.monotonic()
    proc = run_worker(s3_env(dbenv, world, s3, endpoint=proxy.endpoint(), scene_timeout=3), "s2", 10)
    # back within the start-up plus the bound, where GDAL alone would wait 4 x 120 s per request
    assert time.monotonic() - t0 < 120
    assert proxy.hung, "the worker never asked for the product"
    assert_one_line_error(proc, "did not return within extract.scene_timeout (3 s)", "given back", code=1)
    assert dbenv.query("SELECT status, attempts, storage_faults, detail LIKE 'timeout: %%' FROM extraction_runs"
                       ) == [("ingested", 1, 0, True)]
    assert dbenv.query("SELECT count(*) FROM sigs") == [(0,)]
    proxy.hang = None  # the storage answers again: the next worker (the swarm's restart) extracts it
    again = run_worker(s3_env(dbenv, world, s3, endpoint=proxy.endpoint()), "s2", 10)
    assert again.returncode == 0, again.stderr
    assert dbenv.query("SELECT status, attempts FROM extraction_runs") == [("extracted", 2)]
    refs = {scene.reference}
    assert only(results(dbenv), [("s2", 10)], refs) == only(folder_results, [("s2", 10)], refs)


def test_lease_stolen_during_a_hung_read(dbenv, world, s3, proxy, folder_results, tmp_path):
    a, b = [s for s in world.scenes if s.card == "s2"][:2]
    init_db(dbenv, World(world.root, [a, b]))
    env = s3_env(dbenv, world, s3, endpoint=proxy.endpoint(), lease=3, poll=0.2)
    proxy.hang = product_name(a)
    first = start_worker(env, "s2", 10, tmp_path / "first")
    try:
        wait_for(lambda: proxy.hung, what="the first worker to hang in a read of scene A")
        os.kill(first.pid, signal.SIGSTOP)   # frozen: its heartbeat stops, its lease runs out
        wait_for(lambda: dbenv.query("SELECT lease_until < now() FROM extraction_runs")[0][0], timeout=30,
                 what="the first worker's lease to expire")
        proxy.hang = None
        second = run_worker(env, "s2", 10)
        assert second.returncode == 0, second.stderr
        assert dbenv.query("SELECT count(*) FROM extraction_runs WHERE status = 'extracted'") == [(2,)]
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=60) == 0, (tmp_path / "first.err").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    out = (tmp_path / "first.out").read_text()
    obsid = dbenv.query("SELECT id FROM dias_catalogue WHERE reference = %s", (a.reference,))[0][0]
    new_owner = dbenv.query("SELECT owner FROM extraction_runs WHERE obsid = %s", (obsid,))[0][0]
    assert f"scene {obsid} {a.reference}: the lease expired and worker {new_owner} took the scene over; " \
           "nothing written" in out, out
    assert "processed 0 scene(s)" in out, out
    assert len(proxy.hung) == 1   # its read still hangs: the lease was looked at while it waited
    assert dbenv.query("SELECT obsid, attempts FROM extraction_runs ORDER BY obsid") == [
        (obsid, 2), (obsid + 1, 1)]
    assert dbenv.query("SELECT count(*) = count(DISTINCT (obsid, pid, band)) FROM sigs") == [(True,)]
    refs = {a.reference, b.reference}
    assert only(results(dbenv), [("s2", 10)], refs) == only(folder_results, [("s2", 10)], refs)
