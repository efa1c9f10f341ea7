"""The products the ODP stand-in (sandbox/odp.py) makes: a CARD product of an input, written with
the real layouts (sandbox/synthetic.py) over the input's footprint, and its catalog entry as resto
lists it (productIdentifier = its /eodata path, as CDSE publishes ODP's standard outputs)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
from rasterio import Affine

from extractor.catalog import parse_feature
from sandbox import synthetic
from sandbox.catalog_replay import _bbox_of_coords

WORKFLOWS = [
    {"Id": "2", "Name": "card_bs", "DisplayName": "Sentinel-1: Backscatter", "Documentation": None,
     "Description": "CARD-BS: terrain-corrected gamma0 (stand-in)", "InputProductType": "GRD",
     "InputProductTypes": ["GRD", "IW_GRDH_1S", "EW_GRDM_1S"], "OutputProductType": "CARD-BS", "WorkflowVersion": "3.6.2"},
    {"Id": "46", "Name": "coh", "DisplayName": "Sentinel-1: Coherence (6 days)", "Documentation": None,
     "Description": "CARD-COH6 (stand-in; the real name is not documented)", "InputProductType": "SLC",
     "InputProductTypes": ["SLC", "IW_SLC__1S"], "OutputProductType": "CARD-COH6", "WorkflowVersion": "3.1.0"},
    {"Id": "47", "Name": "card_coh12_public", "DisplayName": "Sentinel-1: Coherence (12 days)", "Documentation": None,
     "Description": "CARD-COH12 (stand-in)", "InputProductType": "SLC", "InputProductTypes": ["SLC", "IW_SLC__1S"],
     "OutputProductType": "CARD-COH12", "WorkflowVersion": "3.1.0"},
    {"Id": "12", "Name": "Sentinel-1-L0-IW_GRDH_1S", "DisplayName": "Sentinel-1 L0 to IW GRD", "Documentation": None,
     "Description": "IPF production (stand-in)", "InputProductType": "IW_RAW__0", "InputProductTypes": ["IW_RAW__0"],
     "OutputProductType": "IW_GRDH_1S", "WorkflowVersion": "3.71"},
]
# workflow -> its CARD product type; a product is named <input stem>_<type with "_">, e.g. _CARD_BS
OUTPUTS = {w["Name"]: w["OutputProductType"] for w in WORKFLOWS if w["OutputProductType"].startswith("CARD-")}
PIXEL = 9e-5          # degrees, ~10 m: SNAP's default grid for CARD products is geographic WGS84
MAX_PIXELS = 1500     # a whole real footprint (250 km) would be huge: coarser pixels beyond this


def produce(workflow: str, name: str, feature: dict | None, eodata: Path | None) -> dict | None:
    """Write the product of `name` (when the input's catalog entry and eodata are known) and return
    its catalog entry (None when the input is not in the catalog)."""
    if workflow not in OUTPUTS or feature is None:
        return None
    ptype = OUTPUTS[workflow]
    source = parse_feature(feature)
    if source is None:
        return None
    ref = (name[:-5] if name.endswith(".SAFE") else name) + "_" + ptype.replace("-", "_")
    props = feature["properties"]
    date = source.obstime.strftime("%Y/%m/%d")
    path = f"/eodata/Sentinel-1/SAR/{ptype}/{date}/{ref}"
    if eodata is not None:
        path = _write(eodata, ptype, ref, source.obstime, feature["geometry"], name[:3])
    return {"type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, ref)), "geometry": feature["geometry"],
            "properties": {"collection": "SENTINEL-1", "status": "ONLINE", "title": ref, "productIdentifier": path,
                           "startDate": props["startDate"], "completionDate": props.get("completionDate"),
                           "productType": ptype, "processingLevel": "LEVEL2", "platform": props.get("platform", name[:3]),
                           "instrument": "SAR", "sensorMode": "IW", "orbitDirection": props.get("orbitDirection"),
                           "relativeOrbitNumber": props.get("relativeOrbitNumber"), "polarisation": "VV&VH"}}


def _write(eodata: Path, ptype: str, ref: str, start, geometry: dict, sat: str) -> str:
    west, south, east, north = _bbox_of_coords(geometry["coordinates"])
    px = max(PIXEL, (east - west) / MAX_PIXELS, (north - south) / MAX_PIXELS)
    w, h = max(1, int((east - west) / px) + 1), max(1, int((north - south) / px) + 1)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(ref.encode()).digest()[:8], "big"))
    hi = 0.3 if ptype == "CARD-BS" else 0.9
    vv, vh = (rng.uniform(0.01, hi, (h, w)).astype(np.float32) for _ in range(2))
    transform = Affine(px, 0, west, 0, -px, north)
    if ptype == "CARD-BS":
        return synthetic.write_bs(eodata, start, "EPSG:4326", transform, vv, vh, sat=sat, ref=ref)
    return synthetic.write_c6(eodata, start, "EPSG:4326", transform, vv, vh, sat=sat, ref=ref, product=ptype)
