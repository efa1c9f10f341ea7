"""Reading the products from S3 vs from a local folder: one full-size S2 tile through the real worker.

Inputs: bench/extract's generated tile (cached in bench/out/extract/<size>/: 4 bands at 10 m as
lossless JP2 with 1024 x 1024 tiles in a real SAFE layout, the SCL band at 20 m, ~100,000 parcels).
The same eodata folder is read by the worker directly (eodata.source folder) and served by a local
S3 server (sandbox/s3.py: moto on loopback, path-style, signed requests; eodata.source s3).
Measured in one run, on a throwaway PostGIS, the queue reset before every worker so that each one
processes the same scene:
  * the upload of the folder to the S3 server (reported apart: not part of any ratio)
  * the worker's scene (`python -m extractor.extract run --once`, the swarm replicas' entry point),
    the 10 m run (B02 B03 B04 B08) and the SCL run (-1), from the folder and from S3: wall time of
    the scene and of the worker process, and from S3 the bytes fetched (the worker's ", N MB
    fetched") against the size of the run's band files, and the requests the S3 server answered
    (object GETs and folder listings, from its request log)
  * the same with the AOI on a quarter of the tile: the window, and the bytes fetched, shrink
The S3 server runs on this machine and is moto, which reads the whole object to answer each ranged
GET: the S3/folder time ratio is mostly that server's cost, not a network's (on CDSE: the requests'
latency and the bandwidth). The bytes fetched and the requests are what carry over to CDSE.
Usage: python -m bench storage [--size N] [--repeat R]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import extract
from bench.extract import log

# the worker's scene line: "... N parcels, N rows in T s (read T s, ...)[, N.N MB fetched]"
SCENE = re.compile(r"^scene .*: extracted, (\d+) parcels, (\d+) rows in ([\d.]+) s \(read ([\d.]+) s.*?"
                   r"(?:, ([\d.]+) MB fetched)?$")
# a request in the S3 server's log (werkzeug's line, maybe in colour): path and status
REQUEST = re.compile(r'"(?:\x1b\[[\d;]*m)*GET (/\S+) HTTP/[\d.]+(?:\x1b\[[\d;]*m)*" (\d{3})')
RUNS = ((10, "10 m (4 bands)", "*_B0[2348]_10m.jp2"), (-1, "SCL", "*_SCL_20m.jp2"))
MB = 1e6


def quarter_envelope() -> tuple[float, float, float, float]:
    """The bottom-right quarter of the tile (away from the generated nodata corner, top left)."""
    half = extract.N * 10 / 2
    return extract.X0 + half, extract.Y0 - 2 * half, extract.X0 + 2 * half, extract.Y0 - half


def add_quarter_aoi(conn) -> None:
    with conn, conn.cursor() as cur:
        cur.execute(f"INSERT INTO aois VALUES ('quarter', ST_Transform(ST_MakeEnvelope(%s,%s,%s,%s,{extract.EPSG}),"
                    " 4326))", quarter_envelope())


def tiles_under(path: Path, envelope: tuple[float, float, float, float]) -> tuple[int, int]:
    """(JP2 tiles an envelope touches, all tiles) of a band file: what a window there must fetch."""
    import rasterio

    with rasterio.open(path) as ds:
        bh, bw = ds.block_shapes[0]
        (r0, r1), (c0, c1) = ds.window(*envelope).toranges()
        touched = (math.ceil(r1 / bh) - math.floor(r0 / bh)) * (math.ceil(c1 / bw) - math.floor(c0 / bw))
        return touched, math.ceil(ds.height / bh) * math.ceil(ds.width / bw)


def requeue(conn) -> None:
    """Every scene back in the queue and no rows: the next worker processes the same first scene."""
    with conn, conn.cursor() as cur:
        cur.execute("TRUNCATE extraction_runs, sigs, hists")
        cur.execute("UPDATE dias_catalogue SET status = 'ingested'")


def server_requests(s3, eodata: Path, since: int) -> dict:
    """What the S3 server answered after byte `since` of its log: folder listings, object GETs and
    the bytes it read to answer them (moto reads the whole object for every ranged GET)."""
    with open(s3.log_file, "rb") as f:
        f.seek(since)
        text = f.read().decode("utf-8", "replace")
    counts = {"lists": 0, "gets": 0, "server_read": 0}
    for path, _ in REQUEST.findall(text):
        if "?" in path:
            counts["lists"] += 1
        elif path.startswith(f"/{s3.bucket}/"):
            counts["gets"] += 1
            obj = eodata / path[len(s3.bucket) + 2:]
            counts["server_read"] += obj.stat().st_size if obj.is_file() else 0
    return counts


def worker_scene(env: dict, res: int, aoi: str) -> dict:
    """One scene through the real worker, started as a swarm replica starts it (the extractor image's
    entry point): the scene line's figures and the wall time of the whole worker process (start,
    storage check, claim, scene)."""
    cmd = [sys.executable, "-m", "extractor.extract", "run", "--card", "s2", "--res", str(res), "--once", "--aoi", aoi]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    found = [m for m in map(SCENE.match, proc.stdout.splitlines()) if m]
    if proc.returncode != 0 or len(found) != 1:
        why = (proc.stderr or proc.stdout).strip()[-800:]
        raise SystemExit(f"bench: worker failed (exit {proc.returncode}): {why}")
    parcels, rows, total, read, mb = found[0].groups()
    return {"parcels": int(parcels), "rows": int(rows), "total": float(total), "read": float(read),
            "fetched": float(mb) * MB if mb is not None else None, "wall": wall}


def ratio(what: str, value: float, note: str) -> str:
    return f"  {what:<62} {value:8.2f}x   ({note})"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench storage")
    ap.add_argument("--size", type=int, default=10980, help="tile size in 10 m pixels (smaller = a quick smoke run)")
    ap.add_argument("--repeat", type=int, default=2, help="workers per case, best scene time (order alternates)")
    args, _ = ap.parse_known_args(argv)  # other benchmarks' options pass through `python -m bench`
    extract.N, extract.OUT = args.size, extract.OUT_ROOT / str(args.size)
    extract.N_PARCELS = max(100, int(100_000 * (args.size / 10980) ** 2))

    from extractor import db
    from extractor import settings as settings_mod
    from sandbox.localdb import LocalPostgis
    from sandbox.s3 import EodataS3

    meta = extract.inputs()
    eodata = extract.OUT / "eodata"
    band_files = {res: extract.files(eodata, meta["product_path"], pattern) for res, _, pattern in RUNS}
    band_bytes = {res: sum(p.stat().st_size for p in paths) for res, paths in band_files.items()}
    quarter_tiles = {res: tiles_under(paths[0], quarter_envelope()) for res, paths in band_files.items()}
    upload_files = [p for p in eodata.rglob("*") if p.is_file()]
    upload_bytes = sum(p.stat().st_size for p in upload_files)

    # the finally below must run on `timeout`/kill too: the S3 server is in its own session
    old_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state = Path(tempfile.mkdtemp(prefix="cbm-bench-s3-"))
    s3 = EodataS3(state, eodata, host="127.0.0.1")
    results: dict[tuple[int, str, str], dict] = {}
    try:
        t0 = time.perf_counter()
        s3.start(timeout=60)
        t_upload = time.perf_counter() - t0
        log(f"S3 server (moto, loopback) started and {len(upload_files)} files ({upload_bytes / MB:.0f} MB) uploaded"
            f" in {t_upload:.1f} s ({upload_bytes / MB / t_upload:.0f} MB/s; not part of the ratios)")
        with LocalPostgis() as pg:
            pg.psql("CREATE EXTENSION postgis")
            os.environ.update(pg.env())  # libpq reads PG* from the process environment
            folder = {**os.environ, "CBM_EODATA_SOURCE": "folder", "CBM_EODATA_ROOT": str(eodata),
                      "CBM_EXTRACT_AOI": "tile", "CBM_EXTRACT_PARCELS": "parcels"}
            folder.pop("CBM_CONFIG", None)
            sources = {"folder": folder,
                       "s3": {**folder, "CBM_EODATA_SOURCE": "s3", "CBM_S3_ENDPOINT": s3.endpoint(),
                              "CBM_S3_CREDENTIALS_FILE": str(s3.credentials_file)}}
            settings = settings_mod.load(environ=folder)
            conn = db.connect(settings)
            try:
                extract.load_database(conn, settings, meta)
                add_quarter_aoi(conn)
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "cbm", "extract", "prepare"], env=folder, check=True,
                               capture_output=True)
                log(f"parcels loaded ({meta['parcels']}) and rasterized at 10 and 20 m "
                    f"(cbm extract prepare, {time.perf_counter() - t0:.1f} s; not measured below)")
                for res, label, _ in RUNS:
                    for aoi, i in ((aoi, i) for aoi in ("tile", "quarter") for i in range(args.repeat)):
                        for source in ("folder", "s3")[::1 if i % 2 == 0 else -1]:
                            requeue(conn)
                            since = s3.log_file.stat().st_size
                            r = worker_scene(sources[source], res, aoi)
                            r.update(server_requests(s3, eodata, since))
                            best = results.get((res, aoi, source))
                            if best is None or r["total"] < best["total"]:
                                results[(res, aoi, source)] = r
                            fetched = f", {r['fetched'] / MB:.1f} MB fetched" if r["fetched"] is not None else ""
                            if source == "s3":
                                fetched += (f" in {r['gets']} GETs and {r['lists']} listings (the server read "
                                            f"{r['server_read'] / MB:.0f} MB to answer them)")
                            log(f"worker, {label} run, AOI {aoi}, from {source}: {r['parcels']} parcels in "
                                f"{r['total']:.1f} s (read {r['read']:.1f} s){fetched}; process {r['wall']:.1f} s")
            finally:
                conn.close()
    finally:
        s3.purge()
        shutil.rmtree(state, ignore_errors=True)
        signal.signal(signal.SIGTERM, old_term)

    log("")
    log(f"== reading from S3 (moto on loopback) vs a local folder: one {extract.N} x {extract.N} tile, one scene "
        f"(best of {args.repeat}) ==")
    log(f"  {'run':<15} {'AOI':<8} {'source':<7} {'parcels':>8} {'scene s':>8} {'read s':>7} {'process s':>9} "
        f"{'fetched MB':>10} {'band files MB':>13} {'fetched/files':>13} {'GETs':>5} {'lists':>5}")
    for res, label, _ in RUNS:
        for aoi in ("tile", "quarter"):
            for source in ("folder", "s3"):
                r = results[(res, aoi, source)]
                got = r["fetched"]
                log(f"  {label:<15} {aoi:<8} {source:<7} {r['parcels']:>8} {r['total']:>8.1f} {r['read']:>7.1f} "
                    f"{r['wall']:>9.1f} {'-' if got is None else f'{got / MB:.1f}':>10} "
                    f"{band_bytes[res] / MB:>13.1f} {'-' if got is None else f'{got / band_bytes[res]:.3f}':>13} "
                    f"{'-' if got is None else r['gets']:>5} {'-' if got is None else r['lists']:>5}")
    log("")
    log("== ratios ==")
    for res, label, _ in RUNS:
        for aoi in ("tile", "quarter"):
            s3r, fr = results[(res, aoi, "s3")], results[(res, aoi, "folder")]
            log(ratio(f"{label} run, AOI {aoi}: scene time S3 / folder", s3r["total"] / fr["total"],
                      "moto on loopback, no network: see below"))
    s3_tile = results[(10, "tile", "s3")]
    log(f"  (the S3 server is moto: for every ranged GET it reads the whole object, "
        f"{s3_tile['server_read'] / MB:.0f} MB for the 10 m scene's")
    log(f"   {s3_tile['fetched'] / MB:.0f} MB; a real S3 does not, there the time is the requests' latency and the "
        "bandwidth:")
    log("   compare the bytes fetched and the requests, not the times)")
    for res, label, _ in RUNS:
        whole, quarter = results[(res, "tile", "s3")]["fetched"], results[(res, "quarter", "s3")]["fetched"]
        log(ratio(f"{label} run, AOI tile: bytes fetched / band files", whole / band_bytes[res],
                  "the window is about the whole tile"))
        touched, tiles = quarter_tiles[res]
        log(ratio(f"{label} run, AOI quarter: bytes fetched / band files", quarter / band_bytes[res],
                  f"the AOI touches {touched} of the {tiles} JP2 tiles: {touched / tiles:.2f}"))
    log(f"  {'upload of the eodata folder to the S3 server, s':<62} {t_upload:8.1f}    "
        f"({upload_bytes / MB:.0f} MB, once; not in the ratios)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
