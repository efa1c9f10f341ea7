"""A local stand-in for the CDSE resto search API, for the tests and the local rehearsal.

It answers `GET <base>/<Collection>/search.json?...` the way CDSE does:
  * recorded replies (real response bodies) are served byte for byte for the pages they cover,
    with their links rewritten to this server; later pages are empty;
  * or a list of features is filtered (productType, startDate/completionDate, geometry by
    bounding box), sorted by startDate and paged with maxRecords/page, with a `next` link when a
    page is full (so a full last page is followed by an empty one), and the 10,000-result offset
    cap answered with CDSE's 400 validation error;
  * faults can be injected: 'html', 'truncated', '500' (every request), '429:N' / '500:N' /
    'cut:N' (the first N requests; 'cut' closes the connection half-way through the announced body).
Every request is logged in `.requests` (the parsed query) so tests can check what was asked.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CDSE_BASE = "https://catalogue.dataspace.copernicus.eu/resto/api/collections"
MAX_OFFSET = 10000


def _bbox_of_coords(coords) -> list[float]:
    xs, ys = [], []

    def walk(c):
        if c and isinstance(c[0], (int, float)):
            xs.append(c[0])
            ys.append(c[1])
        else:
            for x in c:
                walk(x)

    walk(coords)
    return [min(xs), min(ys), max(xs), max(ys)]


def _bbox_of_wkt(wkt: str) -> list[float]:
    nums = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:[eE]-?\d+)?", wkt)]
    xs, ys = nums[0::2], nums[1::2]
    return [min(xs), min(ys), max(xs), max(ys)]


def _type_matches(ptype: str | None, asked: str) -> bool:
    """resto's productType: the type itself, or for S1 a group (GRD matches IW_GRDH_1S, SLC IW_SLC__1S)."""
    parts = (ptype or "").split("_")
    return ptype == asked or (asked in ("GRD", "SLC") and len(parts) > 1 and parts[1].startswith(asked))


def _overlap(a, b) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


class CatalogReplay:
    """`with CatalogReplay(features={'Sentinel2': [...]}) as cat: cat.url` -> base URL to use.

    `host`: the address it listens on (e.g. the sandbox's eodata gateway, which its servers reach);
    `features` may be changed while it runs (a product published later)."""

    def __init__(self, features: dict[str, list[dict]] | None = None,
                 recorded: dict[tuple[str, int], Path | bytes] | None = None,
                 fault: str | None = None, port: int = 0, max_offset: int = MAX_OFFSET, host: str = "127.0.0.1"):
        self.features = features or {}
        self.recorded = recorded or {}
        self.fault = fault
        self.max_offset = max_offset
        self.requests: list[dict] = []
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/resto/api/collections"

    def start(self) -> "CatalogReplay":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- answering ---------------------------------------------------------------------------
    def _fault_now(self) -> str | None:
        if not self.fault:
            return None
        kind, _, count = self.fault.partition(":")
        if not count:
            return kind
        if int(count) > 0:
            self.fault = f"{kind}:{int(count) - 1}"
            return kind
        return None

    def answer(self, path: str, query: dict[str, str]) -> tuple[int, str, bytes]:
        m = re.match(r"^/resto/api/collections/([^/]+)/search\.json$", path)
        if not m:
            return 404, "application/json", b'{"ErrorMessage": "Not Found", "ErrorCode": 404}'
        collection = m.group(1)
        fault = self._fault_now()
        if fault == "html":
            return 200, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        if fault == "truncated":
            return 200, "application/json", b'{"type": "FeatureCollection", "features": [{"type": "Fea'
        if fault in ("500", "429"):
            return int(fault), "application/json", b'{"detail": "injected fault"}'
        status, ctype, body = self._reply(collection, query)
        return status, ctype, (_Cut(body[:len(body) // 2]) if fault == "cut" else body)

    def _reply(self, collection: str, query: dict[str, str]) -> tuple[int, str, bytes]:
        page = int(query.get("page", "1"))
        size = int(query.get("maxRecords", "20"))
        index = int(query.get("index", "1"))
        if (page - 1) * size + index - 1 >= self.max_offset:
            body = {"detail": {"ErrorMessage": "Validation error.", "ErrorCode": 400, "ErrorDetail": [
                {"loc": ["page", "maxRecords", "index"],
                 "msg": "The '(page - 1) * maxRecords + index - 1' should be less than 10000."}]}}
            return 400, "application/json", json.dumps(body).encode()
        if (collection, page) in self.recorded:
            raw = self.recorded[(collection, page)]
            body = raw if isinstance(raw, bytes) else Path(raw).read_bytes()
            return 200, "application/json", body.replace(CDSE_BASE.encode(), self.url.encode())
        if self.recorded:
            return 200, "application/json", json.dumps(self._page([], 0, page, size, collection, query)).encode()
        items = self._select(collection, query)
        chunk = items[(page - 1) * size: page * size]
        return 200, "application/json", json.dumps(self._page(chunk, len(items), page, size, collection, query)).encode()

    def _select(self, collection: str, q: dict[str, str]) -> list[dict]:
        feats = self.features.get(collection, [])
        out = []
        box = _bbox_of_wkt(q["geometry"]) if "geometry" in q else None
        for f in feats:
            p = f["properties"]
            if "productType" in q and not _type_matches(p.get("productType"), q["productType"]):
                continue
            if "sensorMode" in q and p.get("sensorMode", q["sensorMode"]) != q["sensorMode"]:
                continue
            if "startDate" in q and p["startDate"] < q["startDate"]:
                continue
            if "completionDate" in q and p["startDate"] > q["completionDate"]:
                continue
            if box and isinstance(f.get("geometry"), dict) and not _overlap(box, _bbox_of_coords(f["geometry"]["coordinates"])):
                continue
            out.append(f)
        return sorted(out, key=lambda f: f["properties"]["startDate"])

    def _page(self, chunk, total, page, size, collection, query) -> dict:
        def link(rel, pg):
            q = {**query, "page": str(pg)}
            return {"rel": rel, "type": "application/json", "title": rel,
                    "href": f"{self.url}/{collection}/search.json?{urllib.parse.urlencode(q)}"}

        links = [link("self", page)]
        if len(chunk) == size and page * size < self.max_offset:
            links.append(link("next", page + 1))
        if page > 1:
            links.append(link("previous", page - 1))
        return {"type": "FeatureCollection",
                "properties": {"totalResults": None, "exactCount": 0, "startIndex": (page - 1) * size + 1,
                               "itemsPerPage": len(chunk), "links": links},
                "features": chunk}

    def _handler(self):
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                parsed = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(parsed.query))
                replay.requests.append({"path": parsed.path, **query})
                status, ctype, body = replay.answer(parsed.path, query)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                # a cut reply announces more than it sends, then the connection closes
                self.send_header("Content-Length", str(len(body) * 2 + 1 if isinstance(body, _Cut) else len(body)))
                self.close_connection = isinstance(body, _Cut)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


class _Cut(bytes):
    """The first half of a reply whose connection is cut (an injected 'cut' fault)."""


def s2_feature(tile: str, sensing: str, baseline: str = "N0500", relorbit: int = 51,
               footprint: list | None = None, platform: str = "S2B") -> dict:
    """A resto feature shaped like CDSE's for an S2 L2A product (used to build synthetic catalogs).

    sensing: 'YYYYMMDDTHHMMSS'; baseline: 'N0207', 'N0500', 'N9999', ..."""
    date = f"{sensing[:4]}/{sensing[4:6]}/{sensing[6:8]}"
    title = f"{platform}_MSIL2A_{sensing}_{baseline}_R{relorbit:03d}_T{tile}_{sensing[:8]}T235959"
    folder = "L2A_N0500" if baseline == "N0500" else "L2A"
    if baseline != "N9999":
        title += ".SAFE"
    iso = f"{sensing[:4]}-{sensing[4:6]}-{sensing[6:8]}T{sensing[9:11]}:{sensing[11:13]}:{sensing[13:15]}.024Z"
    geometry = {"type": "Polygon", "coordinates": footprint or [[[5.0, 51.0], [6.0, 51.0], [6.0, 52.0], [5.0, 52.0], [5.0, 51.0]]]}
    return {"type": "Feature", "id": title, "geometry": geometry, "properties": {
        "collection": "SENTINEL-2", "status": "ONLINE", "title": title,
        "productIdentifier": f"/eodata/Sentinel-2/MSI/{folder}/{date}/{title}",
        "startDate": iso, "completionDate": iso, "productType": "S2MSI2A", "processingLevel": "S2MSI2A",
        "platform": platform, "instrument": "MSI", "processingBaseline": 99.99 if baseline == "N9999" else int(baseline[1:]) / 100,
    }}


def s1_feature(card: str, start: str, footprint: list, platform: str = "S1A") -> dict:
    """A resto feature for an S1 CARD-BS / CARD-COH6 product. start: 'YYYYMMDDTHHMMSS'."""
    date = f"{start[:4]}/{start[4:6]}/{start[6:8]}"
    kind = {"bs": ("CARD-BS", "CARD_BS"), "c6": ("CARD-COH6", "CARD_COH6"), "c12": ("CARD-COH12", "CARD_COH12")}[card]
    title = f"{platform}_IW_GRDH_1SDV_{start}_{start[:9]}235959_012345_01ABCD_ABCD_{kind[1]}"
    iso = f"{start[:4]}-{start[4:6]}-{start[6:8]}T{start[9:11]}:{start[11:13]}:{start[13:15]}.000Z"
    geom_type = "MultiPolygon" if footprint and isinstance(footprint[0][0][0], list) else "Polygon"
    return {"type": "Feature", "id": title, "geometry": {"type": geom_type, "coordinates": footprint}, "properties": {
        "collection": "SENTINEL-1", "status": "ONLINE", "title": title,
        "productIdentifier": f"/eodata/Sentinel-1/SAR/{kind[0]}/{date}/{title}",
        "startDate": iso, "completionDate": iso, "productType": kind[0], "processingLevel": "LEVEL2",
        "platform": platform, "instrument": "SAR-C SAR",
    }}


def s1_input_feature(kind: str, start: str, footprint: list, platform: str = "S1A", timeliness: str = "NRT-3h",
                     orbit: int = 52433, datatake: str = "06574A", unique: str = "9703") -> dict:
    """A resto feature for an S1 IW GRD or SLC product, the input of a CARD order, shaped like CDSE's.
    start: 'YYYYMMDDTHHMMSS'; a slice lasts 25 s."""
    t0 = dt.datetime.strptime(start, "%Y%m%dT%H%M%S")
    t1 = t0 + dt.timedelta(seconds=25)
    ptype = {"GRD": "IW_GRDH_1S", "SLC": "IW_SLC__1S"}[kind]
    title = f"{platform}_{ptype}DV_{start}_{t1:%Y%m%dT%H%M%S}_{orbit:06d}_{datatake}_{unique}.SAFE"
    geom_type = "MultiPolygon" if footprint and isinstance(footprint[0][0][0], list) else "Polygon"
    return {"type": "Feature", "id": title, "geometry": {"type": geom_type, "coordinates": footprint}, "properties": {
        "collection": "SENTINEL-1", "status": "ONLINE", "title": title,
        "productIdentifier": f"/eodata/Sentinel-1/SAR/{kind}/{t0:%Y/%m/%d}/{title}",
        "startDate": f"{t0:%Y-%m-%dT%H:%M:%S}.000Z", "completionDate": f"{t1:%Y-%m-%dT%H:%M:%S}.000Z",
        "productType": ptype, "processingLevel": "LEVEL1", "platform": platform, "instrument": "SAR",
        "sensorMode": "IW", "orbitNumber": orbit, "timeliness": timeliness, "polarisation": "VV&VH",
    }}
