"""Parcel loading benchmark: `cbm parcels load` vs `ogr2ogr -nlt MULTIPOLYGON` (the seed's way).

Input (generated once, cached in bench/out/parcels/): the 100 real DK parcels of
examples/parcels/, repeated on a grid of shifted copies (default 200,000 parcels, EPSG:25832), as a
GeoPackage and as GeoParquet; 1 parcel in 1000 is made a bow-tie so the repair path runs.
Measured on a throwaway PostGIS, best of --repeat runs, each into a fresh table:
  * cbm parcels load (the real CLI: read, COPY, validity check + ST_MakeValid, table, GiST index)
    from the GeoPackage and from the GeoParquet
  * ogr2ogr -f PostgreSQL -nlt MULTIPOLYGON from the GeoPackage (COPY, GiST index; no validity check)
  * peak memory of each command
Usage: python -m bench parcels [--parcels N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out" / "parcels"
DK = ROOT / "examples" / "parcels" / "dk_marker_2026" / "Marker_2026.shp"
INPUT_VERSION = 1


def log(msg: str) -> None:
    print(msg, flush=True)


def make_inputs(n: int) -> tuple[Path, Path]:
    """The DK parcels tiled into n parcels (GeoPackage + GeoParquet), cached by size."""
    gpkg, parquet = OUT / f"dk_{n}.gpkg", OUT / f"dk_{n}.parquet"
    stamp = OUT / f"dk_{n}.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("version") == INPUT_VERSION:
        return gpkg, parquet
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    from pyogrio.raw import read_arrow, write_arrow

    OUT.mkdir(parents=True, exist_ok=True)
    meta, table = read_arrow(DK)
    base = shapely.from_wkb(table.column(meta["geometry_name"] or "wkb_geometry").to_numpy(zero_copy_only=False))
    copies = -(-n // len(base))
    step = 300_000.0  # the sample spans ~210 x 273 km: copies do not overlap
    per_row = 40
    geoms, idx = [], []
    for k in range(copies):
        dx, dy = (k % per_row) * step, (k // per_row) * step
        geoms.append(shapely.transform(base, lambda xy, dx=dx, dy=dy: xy + (dx, dy)))
        idx.append(np.arange(len(base)))
    geoms = np.concatenate(geoms)[:n]
    idx = np.concatenate(idx)[:n]
    bowtie = shapely.from_wkt("POLYGON((0 0, 100 100, 100 0, 0 100, 0 0))")
    for i in range(500, n, 1000):  # 1 in 1000 invalid
        geoms[i] = shapely.transform(bowtie, lambda xy, c=shapely.get_coordinates(geoms[i])[0]: xy + c)
    attrs = table.drop_columns([meta["geometry_name"] or "wkb_geometry"]).take(pa.array(idx))
    wkb = pa.array(shapely.to_wkb(geoms), pa.binary())
    out = attrs.append_column("geometry", wkb)
    crs = json.loads(table.schema.field(meta["geometry_name"] or "wkb_geometry")
                     .metadata[b"ARROW:extension:metadata"])["crs"]
    geo = {"version": "1.1.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": crs}}}
    pq.write_table(out.replace_schema_metadata({b"geo": json.dumps(geo).encode()}), parquet)
    gpkg.unlink(missing_ok=True)
    write_arrow(out, gpkg, driver="GPKG", geometry_name="geometry", geometry_type="Polygon",
                crs="EPSG:25832", layer="parcels")
    stamp.write_text(json.dumps({"version": INPUT_VERSION, "parcels": n}))
    return gpkg, parquet


def run(cmd: list[str], env: dict) -> tuple[float, int]:
    """Wall time and peak RSS (MB) of one command; stops the benchmark if the command fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} failed: {err.decode(errors='replace').strip()[-500:]}")
    return dt, usage.ru_maxrss // 1024


def best(label: str, repeat: int, make_cmd, env: dict, drop) -> tuple[float, int]:
    times, peak = [], 0
    for i in range(repeat):
        drop()
        t, mem = run(make_cmd(i), env)
        times.append(t)
        peak = max(peak, mem)
    log(f"  {label:<40} best {min(times):6.2f} s  peak {peak:4d} MB  (runs: {', '.join(f'{t:.2f}' for t in times)})")
    return min(times), peak


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench parcels")
    ap.add_argument("--parcels", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    ogr2ogr = shutil.which("ogr2ogr")
    # Made in a child process: peak memory (ru_maxrss) is inherited across fork/exec, so the runner
    # must stay small for the per-command peaks to mean something.
    subprocess.run([sys.executable, "-c", f"from bench.parcels import make_inputs; make_inputs({args.parcels})"],
                   check=True, cwd=ROOT)
    gpkg, parquet = OUT / f"dk_{args.parcels}.gpkg", OUT / f"dk_{args.parcels}.parquet"
    log(f"input: {args.parcels} parcels (real DK parcels, tiled; 1 in 1000 a bow-tie), "
        f"GeoPackage {gpkg.stat().st_size / 1e6:.0f} MB, GeoParquet {parquet.stat().st_size / 1e6:.0f} MB")

    from sandbox.localdb import LocalPostgis

    with LocalPostgis() as pg:
        pg.psql("CREATE EXTENSION postgis")
        env = {**os.environ, **pg.env()}
        env.pop("CBM_CONFIG", None)
        cbm = [sys.executable, "-m", "cbm", "-q", "parcels", "load"]

        def drop(table):
            return lambda: pg.psql(f"DROP TABLE IF EXISTS {table}")

        ours, _ = best("cbm parcels load (GeoPackage)", args.repeat,
                       lambda i: cbm + [str(gpkg), "--table", "p_cbm"], env, drop("p_cbm"))
        ours_pq, _ = best("cbm parcels load (GeoParquet)", args.repeat,
                          lambda i: cbm + [str(parquet), "--table", "p_cbm_pq"], env, drop("p_cbm_pq"))
        peer = None
        if ogr2ogr:
            peer, _ = best("ogr2ogr -nlt MULTIPOLYGON (GeoPackage)", args.repeat,
                           lambda i: [ogr2ogr, "-f", "PostgreSQL", "PG:", str(gpkg), "-nln", "p_ogr",
                                      "-nlt", "MULTIPOLYGON", "-lco", "GEOMETRY_NAME=wkb_geometry"], env, drop("p_ogr"))
        counts = pg.psql("SELECT (SELECT count(*) FROM p_cbm) || ' ' || (SELECT count(*) FROM p_cbm_pq)"
                         " || ' ' || (SELECT count(*) FILTER (WHERE NOT ST_IsValid(wkb_geometry)) FROM p_cbm)"
                         + (" || ' ' || (SELECT count(*) FILTER (WHERE NOT ST_IsValid(wkb_geometry)) FROM p_ogr)"
                            if ogr2ogr else ""), dbname="postgres")
    parts = counts.split()
    log(f"rows: cbm {parts[0]} (GeoPackage), {parts[1]} (GeoParquet); invalid geometries left: cbm {parts[2]}"
        + (f", ogr2ogr {parts[3]}" if ogr2ogr else ""))
    log(f"cbm parcels load: {args.parcels / ours:,.0f} parcels/s (GeoPackage), "
        f"{args.parcels / ours_pq:,.0f} parcels/s (GeoParquet)")
    if peer:
        log(f"ratio cbm / ogr2ogr (GeoPackage): {ours / peer:.2f}x the time "
            "(cbm also checks every geometry and repairs the invalid ones; ogr2ogr does not)")
    return 0
