"""The local rehearsal (`./run demo`): a whole Member State onboarding on the sandbox cloud.

  1. start the sandbox cloud (a local OpenStack whose servers are containers) with a generated
     /eodata tree: S2 L2A (JP2), CARD-BS (ENVI) and CARD-COH6 (GeoTIFF) products over the Danish
     sample parcels, in the real layouts;
  2. `cbm up` the example spec inventories/sandbox/deployment.yml, with the sandbox's S3 endpoint and
     keys file as its `eodata` (written to inventories/sandbox/rehearsal.yml): 1 manager + 2 workers,
     volume, security group, floating IP, then Ansible: Docker on the volume, PostGIS, schema, swarm;
  3. `cbm onboard`: the real DK parcels, the AOI, the catalog (from the sandbox's stand-in of the CDSE
     resto API, which lists the generated products), the rasterized parcels;
  4. Sentinel-1 CARD on demand: the catalog also lists IW GRD products without their CARD-BS;
     `cbm order s1` orders them from the sandbox's stand-in of the On-Demand Production API, which
     makes them (into /eodata and S3), `cbm order status --refresh` sees them completed, and
     `cbm catalog sync` brings them into dias_catalogue: GRD catalogued -> ordered -> produced -> synced;
  5. `cbm extract swarm` for s2 (SCL, 10 m, 20 m), bs (the ordered products too) and c6: swarm services
     that end by themselves, their workers reading the products from S3 (ranged reads, keys from a
     swarm secret) as on CDSE;
  6. `cbm status`, and the line that tears it all down.
The environment is left up. Each step prints its wall time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyogrio
import yaml
from rasterio import Affine
from rasterio.warp import transform_geom

from sandbox import synthetic
from sandbox.catalog_replay import s1_input_feature
from sandbox.cloud import Sandbox

REPO = Path(__file__).resolve().parent.parent
SPEC = REPO / "inventories" / "sandbox" / "deployment.yml"
S3_SPEC = SPEC.with_name("rehearsal.yml")   # SPEC + the sandbox's S3 endpoint (written at each run)
PARCELS = REPO / "examples" / "parcels" / "dk_marker_2026" / "Marker_2026.shp"
START, END = "2026-04-01", "2026-04-30"
S2_DATES = [dt.datetime(2026, 4, 3, 10, 30, 21), dt.datetime(2026, 4, 13, 10, 30, 21), dt.datetime(2026, 4, 23, 10, 30, 21)]
S1_DATES = [dt.datetime(2026, 4, 5, 5, 30, 12), dt.datetime(2026, 4, 17, 5, 30, 12)]
ORDER_DATE = dt.datetime(2026, 4, 11, 5, 30, 12)   # IW GRD listed without CARD-BS: ordered on demand
WINDOW = 12_000   # metres: the generated scenes cover a 12 km square around a cluster of parcels
WINDOWS = 2       # ... at the two densest places of the sample
# Variables of the rehearsal's environment that decide where `cbm` finds its files: the deployment's
# local state and the sandbox's state (XDG_STATE_HOME), the settings file (XDG_CONFIG_HOME).
STATE_VARS = ("XDG_STATE_HOME", "XDG_CONFIG_HOME")


# -- generated products ----------------------------------------------------------------------
def mgrs_tile(zone: int, x: float, y: float, lat: float) -> str:
    """The MGRS 100 km square of a UTM coordinate (zone number, latitude band, column, row)."""
    cols = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    band = "CDEFGHJKLMNPQRSTUVWX"[int((lat + 80) // 8)]
    return f"{zone:02d}{band}{cols[int(x // 100000) - 1]}{rows[(int(y // 100000) + (5 if zone % 2 == 0 else 0)) % 20]}"


def parcel_windows(count: int = WINDOWS, size: float = WINDOW) -> list[tuple[float, float]]:
    """Top-left corners (UTM 32N, 20 m aligned) of the squares holding the most sample parcels."""
    # The DK sample is in EPSG:25832 (ETRS89 / UTM 32N), within a metre of WGS84 / UTM 32N.
    bounds = pyogrio.read_bounds(str(PARCELS))[1]          # (xmin, ymin, xmax, ymax) per parcel
    centres = np.column_stack([(bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2])
    cells: dict[tuple[int, int], int] = {}
    for x, y in centres:
        key = (int(x // size), int(y // size))
        cells[key] = cells.get(key, 0) + 1
    best = sorted(cells.items(), key=lambda kv: -kv[1])[:count]
    out = []
    for (cx, cy), _ in best:
        x0 = cx * size - 1000
        y1 = (cy + 1) * size + 1000
        out.append((float(x0 // 20 * 20), float(-(-y1 // 20) * 20)))
    return out


def generate(eodata: Path) -> dict:
    """Write the products under `eodata` and return the stand-in catalog's features per collection."""
    rng = np.random.default_rng(2026)
    epsg = 32632
    n10 = int((WINDOW + 2000) // 10)
    n20 = n10 // 2
    features: dict[str, list] = {"Sentinel2": [], "Sentinel1": []}

    def footprint(x0, y0, width_m, crs=f"EPSG:{epsg}"):
        ring = [[x0, y0], [x0 + width_m, y0], [x0 + width_m, y0 - width_m], [x0, y0 - width_m], [x0, y0]]
        return transform_geom(crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})

    def feature(path: str, geom: dict, when: dt.datetime, ptype: str, collection: str) -> None:
        title = path.rsplit("/", 1)[-1]
        features[collection].append({"type": "Feature", "id": title, "geometry": geom, "properties": {
            "title": title, "productIdentifier": path, "startDate": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "completionDate": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "productType": ptype,
            "platform": title[:3], "processingBaseline": 5.1 if collection == "Sentinel2" else None}})

    def field(shape, lo, hi, dtype):
        """Blocky values (fields of 200 m) with a little noise: compresses like real imagery."""
        cells = rng.uniform(lo, hi, (shape[0] // 20 + 1, shape[1] // 20 + 1))
        grid = np.kron(cells, np.ones((20, 20)))[: shape[0], : shape[1]]
        return (grid + rng.normal(0, (hi - lo) / 50, shape)).clip(lo, hi).astype(dtype)

    for k, (x0, y0) in enumerate(parcel_windows()):
        geom = footprint(x0, y0, n10 * 10)
        lon, lat = geom["coordinates"][0][0]
        tile = mgrs_tile(32, x0, y0, lat)
        for i, when in enumerate(S2_DATES):
            bands10 = {b: field((n10, n10), 800, 4000, np.uint16) for b in ("B02", "B03", "B04", "B08")}
            bands20 = {b: field((n20, n20), 800, 5000, np.uint16) for b in ("B05", "B06", "B07", "B8A", "B11", "B12")}
            scl = np.array([4, 4, 4, 5, 8, 9], dtype=np.uint8)
            bands20["SCL"] = scl[field((n20, n20), 0, 5.99, np.float32).astype(int)]
            bands10["B02"][: n10 // 6] = 0  # a nodata strip, as at a swath edge
            path = synthetic.write_s2(eodata, when, tile, epsg, x0, y0, bands10, bands20,
                                      sat="S2A" if i % 2 else "S2B")
            feature(path, geom, when, "S2MSI2A", "Sentinel2")
        # S1 CARD products in geographic WGS84 (SNAP's default), covering the same square.
        west, north = geom["coordinates"][0][0]
        xs = [p[0] for p in geom["coordinates"][0]]
        ys = [p[1] for p in geom["coordinates"][0]]
        for card, px, writer, ptype in (("bs", 9e-5, synthetic.write_bs, "CARD-BS"),
                                        ("c6", 1.8e-4, synthetic.write_c6, "CARD-COH6")):
            w = int((max(xs) - min(xs)) / px) + 1
            h = int((max(ys) - min(ys)) / px) + 1
            transform = Affine(px, 0, min(xs), 0, -px, max(ys))
            for when in S1_DATES:
                hi = 0.3 if card == "bs" else 0.9
                vv, vh = field((h, w), 0.01, hi, np.float32), field((h, w), 0.01, hi, np.float32)
                path = writer(eodata, when + dt.timedelta(minutes=k), "EPSG:4326", transform, vv, vh)
                ring = [[min(xs), min(ys)], [max(xs), min(ys)], [max(xs), max(ys)], [min(xs), max(ys)], [min(xs), min(ys)]]
                feature(path, {"type": "Polygon", "coordinates": [ring]}, when, ptype, "Sentinel1")
    (eodata / "catalog.json").write_text(json.dumps(features))
    return features


def add_order_inputs(eodata: Path, features: dict) -> dict:
    """List one IW GRD per place (ORDER_DATE, over its CARD-BS footprint) in catalog.json, whose CARD-BS
    is not made yet: the inputs `cbm order s1` orders."""
    if not any(f["properties"]["productType"] == "IW_GRDH_1S" for f in features["Sentinel1"]):
        footprints = [f["geometry"]["coordinates"] for f in features["Sentinel1"]
                      if f["properties"]["productType"] == "CARD-BS"][::len(S1_DATES)]
        for k, ring in enumerate(footprints):
            start = (ORDER_DATE + dt.timedelta(minutes=k)).strftime("%Y%m%dT%H%M%S")
            features["Sentinel1"].append(s1_input_feature("GRD", start, ring, orbit=63000 + k, datatake=f"07B{k:03X}",
                                                          unique=f"C{k:03X}"))
        (eodata / "catalog.json").write_text(json.dumps(features))
    return features


# -- the rehearsal ---------------------------------------------------------------------------
def cbm_program() -> str:
    """This Python's `cbm` as a new shell in the repository root runs it (no venv on PATH needed)."""
    script = Path(sys.executable).parent / "cbm"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m cbm"
    try:
        return str(script.absolute().relative_to(REPO))
    except ValueError:
        return shlex.quote(str(script.absolute()))


def s3_spec(sandbox: Sandbox) -> Path:
    """The example spec with `eodata` from the running sandbox's S3 server (its address on the eodata
    network and its keys file): products are read from S3, as on CDSE."""
    data = yaml.safe_load(SPEC.read_text())
    data["eodata"] = {"source": "s3", "endpoint": sandbox.eodata_endpoint(), "bucket": "eodata",
                      "credentials_file": str(sandbox.s3.credentials_file)}
    S3_SPEC.write_text(f"# Written by the rehearsal (sandbox/rehearsal.py) from {SPEC.name} and the sandbox's S3 server.\n"
                       + yaml.safe_dump(data, sort_keys=False))
    return S3_SPEC


def teardown_line(sandbox: Sandbox, spec: Path, env: dict[str, str]) -> str:
    """The line that tears the rehearsal down, pasted as it is into a new shell in the repository
    root: it names the sandbox's clouds.yaml and cloud, and the state/config folders the rehearsal's
    `cbm` calls used (`env`), so both commands find what the rehearsal made."""
    cbm = cbm_program()
    folders = [f"{name}={shlex.quote(env[name])}" for name in STATE_VARS if env.get(name)]
    cloud = [f"{name}={shlex.quote(value)}" for name, value in sandbox.env.items()]
    down = " ".join([*cloud, *folders, cbm, "down", shlex.quote(str(spec)), "--yes"])
    stop = " ".join([*folders, cbm, "sandbox", "stop", "--purge"])
    return f"{down} && {stop}"


class Steps:
    def __init__(self, env: dict, teardown: str):
        self.env = env
        self.teardown = teardown
        self.times: list[tuple[str, float]] = []

    def cbm(self, title: str, *args: str) -> None:
        print(f"\n== {title}\n$ cbm {' '.join(shlex.quote(str(a)) for a in args)}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "cbm", *map(str, args)], env=self.env, cwd=REPO)
        took = time.monotonic() - t0
        self.times.append((title, took))
        print(f"   ({took:.0f} s)", flush=True)
        if proc.returncode != 0:
            raise SystemExit(f"rehearsal: step '{title}' failed (exit {proc.returncode}); the environment is left "
                             f"as it is; tear it down from {REPO} with: {self.teardown}")

    def timed(self, title: str, fn):
        print(f"\n== {title}", flush=True)
        t0 = time.monotonic()
        result = fn()
        self.times.append((title, time.monotonic() - t0))
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description="the local rehearsal of a Member State onboarding")
    parser.parse_args()
    t0 = time.monotonic()
    sandbox = Sandbox()
    # Generated once and reused: a cache, outside the sandbox's state (which --purge removes).
    eodata = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cbm" / "rehearsal-eodata"
    env = {**os.environ}
    env.pop("CBM_CONFIG", None)
    spec = S3_SPEC.relative_to(REPO)
    steps = Steps(env, teardown_line(sandbox, spec, env))

    def make_data():
        eodata.mkdir(parents=True, exist_ok=True)
        cached = eodata / "catalog.json"
        if cached.is_file():
            print(f"   reusing the products in {eodata}")
            return add_order_inputs(eodata, json.loads(cached.read_text()))
        return add_order_inputs(eodata, generate(eodata))

    features = steps.timed(f"generate the /eodata tree ({eodata})", make_data)
    grd = sum(f["properties"]["productType"] == "IW_GRDH_1S" for f in features["Sentinel1"])
    print(f"   {len(features['Sentinel2'])} S2 L2A and {len(features['Sentinel1']) - grd} S1 CARD products, "
          f"{grd} IW GRD to order CARD-BS from")
    steps.cbm("start the sandbox cloud", "sandbox", "start", "--eodata", eodata)
    env.update(sandbox.env)
    s3_spec(sandbox)
    print(f"   products from S3 at {sandbox.eodata_endpoint()} (the spec: {spec})")
    steps.cbm("provision and configure 1 manager + 2 workers", "up", spec)
    env.update(sandbox.cdse.env)   # the CDSE catalog and On-Demand Production stand-ins
    # the S1 grids are read here too (onboard rasterizes the parcels for them): from S3 as well
    env.update(CBM_EODATA_SOURCE="s3", CBM_S3_ENDPOINT=sandbox.s3.endpoint(),
               CBM_S3_CREDENTIALS_FILE=str(sandbox.s3.credentials_file))
    steps.cbm("onboard the Danish sample parcels", "onboard", spec, "--parcels", PARCELS, "--aoi", "dk",
              "--from", START, "--to", END, "--cards", "s2,bs,c6")
    sandbox.cdse.steer("settings", delay=0)   # the stand-in makes an order in no time (on CDSE: hours)
    steps.cbm("order CARD-BS on demand", "order", "s1", "dk", START, END, "--card", "bs", "--deployment", spec)
    steps.timed("the On-Demand Production stand-in makes them", lambda: sandbox.cdse.steer("finish"))
    steps.cbm("the orders completed", "order", "status", "--refresh", "--deployment", spec)
    steps.cbm("bring the ordered products into the catalog", "catalog", "sync", "dk", START, END, "bs",
              "--deployment", spec)
    for card in ("s2", "bs", "c6"):
        steps.cbm(f"extract {card} on the swarm", "extract", "swarm", spec, "--card", card, "--all")
    steps.cbm("status", "status", spec)
    print("\n== wall times")
    for title, took in steps.times:
        print(f"   {took:7.0f} s  {title}")
    print(f"   {time.monotonic() - t0:7.0f} s  in all")
    print(f"\nThe environment is up. Tear it down (in a shell in {REPO}) with:\n  {steps.teardown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
