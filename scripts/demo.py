"""The README's main command (`./run demo`): the data side of onboarding, on this machine.

Starts a throwaway PostGIS, then runs the real `cbm` commands an agency would run against its
database: create the schema, load the Danish sample parcels (real GSAA data), add the AOI, sync
the catalog from a local stand-in of the CDSE resto API, list the UTM zones to rasterize, and
print the summary. Everything is torn down at the end (--keep leaves the database running).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from extractor.catalog_replay import CatalogReplay, s1_feature, s2_feature  # noqa: E402
from extractor.localdb import LocalPostgis  # noqa: E402

PARCELS = REPO.parent / "shared" / "fixtures" / "parcels" / "dk_marker_2026" / "Marker_2026.shp"


def step(title: str, *args: str, env: dict) -> str:
    print(f"\n== {title}\n$ cbm {' '.join(shlex.quote(a) for a in args)}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cbm", *args], env=env, text=True, capture_output=True, cwd=REPO)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: step '{title}' failed (exit {proc.returncode})")
    print(f"   ({time.monotonic() - t0:.1f} s)")
    return proc.stdout


def tiles_over_aoi(pg: LocalPostgis, dbname: str, aoi: str) -> list[tuple[str, list]]:
    """S2-like tiles (100 km UTM grid cells, 109.8 km wide) that intersect the AOI, as
    (tile name, lon/lat ring) pairs, so the stand-in catalog answers with plausible footprints."""
    sql = f"""
      WITH a AS (SELECT wkb_geometry g FROM aois WHERE name = '{aoi}'),
      z AS (SELECT DISTINCT floor((ST_X(p.geom) + 180) / 6)::int + 1 AS zone
            FROM a, ST_DumpPoints(a.g) p),
      cells AS (
        SELECT z.zone, x, y FROM z, a,
          generate_series(floor(ST_XMin(ST_Transform(a.g, 32600 + z.zone)) / 100000)::int,
                          floor(ST_XMax(ST_Transform(a.g, 32600 + z.zone)) / 100000)::int) x,
          generate_series(floor(ST_YMin(ST_Transform(a.g, 32600 + z.zone)) / 100000)::int,
                          floor(ST_YMax(ST_Transform(a.g, 32600 + z.zone)) / 100000)::int) y)
      SELECT zone, x, y, ST_AsGeoJSON(ST_Transform(ST_MakeEnvelope(x * 100000, y * 100000,
             x * 100000 + 109800, y * 100000 + 109800, 32600 + zone), 4326), 5)
      FROM cells, a
      WHERE ST_Intersects(ST_Transform(ST_MakeEnvelope(x * 100000, y * 100000, x * 100000 + 109800,
            y * 100000 + 109800, 32600 + zone), 4326), a.g)
        AND ST_X(ST_Centroid(ST_Transform(ST_MakeEnvelope(x * 100000, y * 100000, x * 100000 + 109800,
            y * 100000 + 109800, 32600 + zone), 4326))) BETWEEN 6 * zone - 186 AND 6 * zone - 180
      ORDER BY 1, 2, 3"""
    import json

    out = []
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    for line in pg.psql(sql, dbname=dbname).splitlines():
        zone, x, y, geojson = line.split("|")
        ring = json.loads(geojson)["coordinates"]
        band = "U" if y and int(y) < 62 else "V"  # latitude band of Danish tiles (U: 48-56N, V: 56-64N)
        name = f"{zone}{band}{letters[int(x) % 24]}{letters[int(y) % 20]}"
        out.append((name, ring))
    return out


def synthetic_catalog(tiles, start: dt.date, days: int) -> dict:
    """S2 products every 5 days per tile, some acquisitions in two baselines (as CDSE has them),
    and S1 CARD-BS / CARD-COH6 products every 6 days over the whole AOI."""
    s2, s1 = [], []
    for i, (tile, ring) in enumerate(tiles):
        for d in range(i % 5, days, 5):
            day = start + dt.timedelta(days=d)
            sensing = day.strftime("%Y%m%dT103021")
            s2.append(s2_feature(tile, sensing, "N0500", footprint=ring, platform="S2A" if d % 10 else "S2B"))
            if d % 3 == 0:
                s2.append(s2_feature(tile, sensing, "N0207", footprint=ring, platform="S2A" if d % 10 else "S2B"))
    rings = [ring for _, ring in tiles]
    xs = [pt[0] for r in rings for pt in r[0]]
    ys = [pt[1] for r in rings for pt in r[0]]
    box = [[[min(xs), min(ys)], [max(xs), min(ys)], [max(xs), max(ys)], [min(xs), max(ys)], [min(xs), min(ys)]]]
    for d in range(0, days, 6):
        day = start + dt.timedelta(days=d)
        s1.append(s1_feature("bs", day.strftime("%Y%m%dT053012"), box))
        s1.append(s1_feature("c6", day.strftime("%Y%m%dT053012"), box, platform="S1C"))
    return {"Sentinel2": s2, "Sentinel1": s1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="leave the database running at the end")
    args = parser.parse_args()
    t0 = time.monotonic()
    pg = LocalPostgis(root=Path(os.environ.get("CBM_DEMO_DIR", "/tmp/cbm-demo-db")) if args.keep else None)
    pg.start()
    try:
        pg.psql("SELECT 1")
        if "cbm" not in pg.psql("SELECT datname FROM pg_database").split():
            pg.psql("CREATE DATABASE cbm")
        env = {**os.environ, **pg.env("cbm"), "XDG_CONFIG_HOME": str(pg.root / "xdg")}
        env.pop("CBM_CONFIG", None)
        print(f"PostGIS 15 on 127.0.0.1:{pg.port} (password in {pg.passfile}, mode 0600)")
        step("create the CbM schema", "db", "init", env=env)
        step("load the Danish sample parcels (real GSAA data, EPSG:25832)",
             "parcels", "load", str(PARCELS), "--table", "dk_parcels", "--replace", env=env)
        step("add the AOI from the parcels' extent", "aoi", "add", "dk", "--from-parcels", "dk_parcels",
             "--replace", env=env)
        tiles = tiles_over_aoi(pg, "cbm", "dk")
        start = dt.date(2026, 4, 1)
        with CatalogReplay(features=synthetic_catalog(tiles, start, 61)) as cat:
            env["CBM_CATALOG_URL"] = cat.url
            print(f"\n(stand-in for the CDSE catalog at {cat.url}: {len(tiles)} S2 tiles over the AOI)")
            for card in ("s2", "bs", "c6"):
                step(f"sync the {card} catalog", "catalog", "sync", "dk", "2026-04-01", "2026-05-31", card, env=env)
        step("UTM zones to rasterize the parcels for", "parcels", "zones", "--aoi", "dk", env=env)
        step("scene counts by card and status", "catalog", "status", env=env)
        print(f"\ndemo finished in {time.monotonic() - t0:.0f} s")
        if args.keep:
            print(f"database left running; use it with: export {' '.join(f'{k}={v}' for k, v in pg.env('cbm').items())}")
        return 0
    finally:
        if not args.keep:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
