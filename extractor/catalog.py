"""Catalog sync: CDSE OpenSearch (resto) -> dias_catalogue.

`cbm catalog sync AOI START END CARD [PTYPE]` asks the resto API for the products of one CARD
type whose footprint intersects the AOI in [START 00:00, END 24:00) UTC, and inserts the new ones.

Paging: every request sends maxRecords (catalog.page_size, at most 2000) and sorts by startDate;
`next` links are followed until there is none or a page is empty. The API refuses offsets past
10,000 results (catalog.max_offset), so when a window would pass that cap the window is split:
the rest is asked for again from the start time of the last product received (products seen twice
are recognised by their reference).

Sentinel-2 products come in several processing baselines for the same tile and sensing time
(N02xx; N0500 under L2A_N0500/; CloudFerro's N9999 without .SAFE). Exactly one is kept per
(tile, sensing time): the highest ESA baseline. N9999 (processingBaseline 99.99) is not an ESA
baseline but a CloudFerro-generated stand-in, so it is kept only when no ESA product exists.
A better product arriving later replaces a catalogued one only while no extraction has used it.

The whole sync is one transaction: a failure (unreachable API, a reply that is not the expected
JSON, the database going away) leaves the database as it was.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from psycopg2 import sql

from extractor import db, partitions
from extractor.db import table, table_exists
from extractor.errors import CbmError, UserError, one_line

log = logging.getLogger(__name__)

# card -> (resto collection, accepted product types; the first is the default)
CARDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "s2": ("Sentinel2", ("S2MSI2A", "S2MSI1C")),
    "bs": ("Sentinel1", ("CARD-BS",)),
    "c6": ("Sentinel1", ("CARD-COH6",)),
    "c12": ("Sentinel1", ("CARD-COH12",)),
}
ESA_STANDIN_BASELINE = 99.99  # N9999: CloudFerro-generated, ranked below every ESA baseline
MAX_URL_GEOMETRY = 3000       # characters of WKT we put in a URL before simplifying the AOI
S2_TITLE = re.compile(r"^S2[ABCD]_MSI(L2A|L1C)_(\d{8}T\d{6})_N(\d{4})_R\d{3}_T(\d{2})([A-Z])([A-Z]{2})_")


# -- arguments ------------------------------------------------------------------------------
def parse_date(text: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a date; use YYYY-MM-DD") from None


def check_request(card: str, ptype: str | None, start: str, end: str) -> tuple[str, str, dt.date, dt.date]:
    if card not in CARDS:
        raise UserError(f"unknown CARD {card!r}; use one of {', '.join(CARDS)}")
    types = CARDS[card][1]
    ptype = ptype or types[0]
    if ptype not in types:
        raise UserError(f"product type {ptype!r} does not go with CARD {card}; use {' or '.join(types)}")
    d0, d1 = parse_date(start, "START"), parse_date(end, "END")
    if d0 > d1:
        raise UserError(f"START {d0} is after END {d1}; swap them")
    return card, ptype, d0, d1


# -- products -------------------------------------------------------------------------------
@dataclass
class Product:
    reference: str
    obstime: dt.datetime
    sensor: str
    path: str | None
    footprint: str            # GeoJSON text
    baseline: float | None
    tile: str | None = None
    epsg: int | None = None

    @property
    def scene_key(self) -> tuple | None:
        """(tile, sensing time) for S2: products with the same key are one acquisition."""
        m = S2_TITLE.match(self.reference)
        return (m.group(4) + m.group(5) + m.group(6), m.group(2)) if m else None

    @property
    def rank(self) -> float:
        return rank(self.baseline)


def rank(baseline: float | None) -> float:
    """Higher is better; N9999 ranks below every ESA baseline."""
    b = baseline if baseline is not None else 0.0
    return -1.0 if b >= ESA_STANDIN_BASELINE else b


def baseline_of(reference: str, value) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    m = S2_TITLE.match(reference)
    return int(m.group(3)) / 100.0 if m else None


def s2_tile_epsg(reference: str) -> tuple[str | None, int | None]:
    """T31UFS -> ('31UFS', 32631); MGRS latitude bands C..M are south (327zz), N..X north."""
    m = S2_TITLE.match(reference)
    if not m:
        return None, None
    zone, band = int(m.group(4)), m.group(5)
    return m.group(4) + band + m.group(6), (32600 if band >= "N" else 32700) + zone


def parse_feature(feature: dict) -> Product | None:
    """A resto feature -> Product; None when it has no usable footprint."""
    props = feature.get("properties") or {}
    geom = feature.get("geometry")
    if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
        return None
    title = props.get("title")
    start = props.get("startDate")
    if not title or not start:
        return None
    obstime = dt.datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(dt.timezone.utc).replace(tzinfo=None)
    platform = props.get("platform") or title[:3]
    tile, epsg = s2_tile_epsg(title)
    return Product(
        reference=title[:120], obstime=obstime, sensor=(title[1:3] if len(title) > 2 else platform[1:3]),
        path=props.get("productIdentifier"), footprint=json.dumps(geom),
        baseline=baseline_of(title, props.get("processingBaseline")), tile=tile, epsg=epsg,
    )


# -- HTTP -----------------------------------------------------------------------------------
class Client:
    """GET JSON pages from resto with retries on 429 / 5xx / network errors."""

    def __init__(self, settings):
        c = settings.catalog
        self.base = c.url.rstrip("/")
        self.timeout, self.retries, self.backoff = c.timeout, c.retries, c.backoff
        self.requests = 0

    def search_url(self, collection: str, params: dict) -> str:
        return f"{self.base}/{collection}/search.json?{urllib.parse.urlencode(params)}"

    def get(self, url: str) -> dict:
        where = url.split("?")[0]  # messages name the endpoint; the query is in the log (-v)
        delay = self.backoff
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "cbm-onboard"})
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
                break
            except urllib.error.HTTPError as exc:
                retryable = exc.code == 429 or exc.code >= 500
                detail = exc.read()[:200].decode("utf-8", "replace")
                if not retryable or attempt == self.retries:
                    raise CbmError(f"catalog request failed with HTTP {exc.code} at {where}: {one_line(detail)}") from None
                wait = _retry_after(exc.headers.get("Retry-After"), delay)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, http.client.HTTPException) as exc:
                # HTTPException: a reply cut short (IncompleteRead) or malformed: a network error too
                reason = getattr(exc, "reason", exc)
                if attempt == self.retries:
                    raise CbmError(f"catalog unreachable at {where}: {reason} (after {attempt + 1} tries); check catalog.url") from None
                wait = delay
            log.info("catalog: retry %d/%d in %.1fs: %s", attempt + 1, self.retries, wait, url)
            log.debug("catalog: GET %s", url)
            time.sleep(wait)
            delay *= 2
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            start = one_line(body[:60].decode("utf-8", "replace"))
            raise CbmError(f"catalog reply from {where} is not JSON (starts with {start!r}); check catalog.url") from None
        if not isinstance(data, dict) or not isinstance(data.get("features"), list):
            raise CbmError(f"catalog reply from {where} is not a resto FeatureCollection; check catalog.url")
        return data


def _retry_after(header: str | None, default: float) -> float:
    try:
        return max(0.0, min(float(header), 60.0)) if header else default
    except ValueError:
        return default


def next_link(page: dict) -> str | None:
    for link in (page.get("properties") or {}).get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "next" and link.get("href"):
            return link["href"]
    return None


def fetch_window(client: Client, collection: str, params: dict, page_size: int, max_offset: int, stats):
    """Yield features of one query; split the window when the offset cap would be passed."""
    window_start = params["startDate"]
    while True:
        query = {**params, "startDate": window_start}
        url = client.search_url(collection, query)
        received = 0
        last_start = None
        capped = False
        while url and not capped:
            page = client.get(url)
            stats.pages += 1
            features = page["features"]
            if not features:
                return
            for f in features:
                yield f
                s = (f.get("properties") or {}).get("startDate")
                if s:
                    last_start = s
            received += len(features)
            url = next_link(page)
            # CDSE stops emitting `next` at the cap, so a full page there also means "more".
            capped = received + page_size > max_offset and (url is not None or len(features) == page_size)
        if not capped:
            return
        if not last_start or last_start <= window_start:
            raise CbmError(f"more than {max_offset} products share the start time {window_start}; "
                           "the catalog cannot page past them")
        stats.splits += 1
        log.info("catalog: %d results in window from %s; continuing from %s", received, window_start, last_start)
        window_start = last_start


# -- database -------------------------------------------------------------------------------
@dataclass
class SyncStats:
    received: int = 0
    inserted: int = 0
    replaced: int = 0
    known: int = 0
    no_geometry: int = 0
    lower_baseline: int = 0
    pages: int = 0
    splits: int = 0
    by_sensor: dict = field(default_factory=dict)


def aoi_geometry(conn, settings, aoi: str) -> str:
    """The AOI as WKT in EPSG:4326, simplified if too long for a URL."""
    if not table_exists(conn, settings, settings.tables.aois):
        raise UserError("the aois table does not exist; run: cbm db init")
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT ST_AsText(ST_Union(wkb_geometry), 6), ST_AsText(ST_ConvexHull(ST_Union(wkb_geometry)), 5)"
                            " FROM {} WHERE name = %s").format(table(settings, "aois")), (aoi,))
        row = cur.fetchone()
    if not row or row[0] is None:
        raise UserError(f"unknown AOI {aoi!r}; add it with: cbm aoi add {aoi} --from-parcels TABLE (see cbm aoi list)")
    return row[0] if len(row[0]) <= MAX_URL_GEOMETRY else row[1]


def _existing_scene(cur, settings, card: str, product: Product):
    """The catalogued product of the same S2 acquisition, if any: (id, reference, baseline, used)."""
    tile, sensing = product.scene_key
    cur.execute(sql.SQL(
        "SELECT c.id, c.reference, c.processing_baseline, c.status <> 'ingested' OR EXISTS"
        " (SELECT 1 FROM {runs} r WHERE r.obsid = c.id)"
        " FROM {cat} c WHERE c.card = %s AND c.tile = %s AND split_part(c.reference, '_', 3) = %s"
    ).format(cat=table(settings, "catalogue"), runs=table(settings, "extraction_runs")), (card, tile, sensing))
    return cur.fetchall()


def store(conn, settings, card: str, products: list[Product], stats: SyncStats) -> None:
    cat = table(settings, "catalogue")
    insert = sql.SQL(
        "INSERT INTO {} (obstime, reference, sensor, card, footprint, product_path, tile, epsg, processing_baseline)"
        " VALUES (%s, %s, %s, %s, ST_Multi(ST_CollectionExtract(ST_MakeValid(ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)), 3)),"
        " %s, %s, %s, %s) ON CONFLICT (reference) DO NOTHING"
    ).format(cat)
    replace = sql.SQL(
        "UPDATE {} SET obstime = %s, reference = %s, sensor = %s,"
        " footprint = ST_Multi(ST_CollectionExtract(ST_MakeValid(ST_SetSRID(ST_GeomFromGeoJSON(%s), 4326)), 3)),"
        " product_path = %s, tile = %s, epsg = %s, processing_baseline = %s, synced_at = now() WHERE id = %s"
    ).format(cat)
    with conn.cursor() as cur:
        for p in products:
            values = (p.obstime, p.reference, p.sensor, p.footprint, p.path, p.tile, p.epsg, p.baseline)
            if p.scene_key is not None:
                rows = _existing_scene(cur, settings, card, p)
                if any(ref == p.reference for _, ref, _, _ in rows):
                    stats.known += 1
                    continue
                if rows:  # another baseline of this acquisition is catalogued
                    oid, _, obaseline, used = rows[0]
                    if not used and p.rank > rank(obaseline):
                        cur.execute(replace, (*values, oid))
                        stats.replaced += 1
                    else:
                        stats.lower_baseline += 1
                    continue
            cur.execute(insert, (p.obstime, p.reference, p.sensor, card, p.footprint, p.path, p.tile, p.epsg, p.baseline))
            if cur.rowcount:
                stats.inserted += 1
                stats.by_sensor[p.sensor] = stats.by_sensor.get(p.sensor, 0) + 1
            else:
                stats.known += 1
        if stats.inserted:  # sigs/hists partitions for the new obsids (the workers cannot create them)
            partitions.ensure_partitions(cur, settings)


def best_per_scene(products: list[Product], stats: SyncStats) -> list[Product]:
    """Keep one product per (tile, sensing time): the best baseline. Others are counted."""
    best: dict[tuple, Product] = {}
    out: list[Product] = []
    seen: set[str] = set()
    for p in products:
        if p.reference in seen:
            continue  # the same product twice (overlapping windows)
        seen.add(p.reference)
        key = p.scene_key
        if key is None:
            out.append(p)
            continue
        if key in best:
            stats.lower_baseline += 1
            if p.rank > best[key].rank:
                best[key] = p
        else:
            best[key] = p
    return out + list(best.values())


def sync(settings, aoi: str, start: str, end: str, card: str, ptype: str | None = None, progress=None) -> SyncStats:
    """Sync one CARD type for an AOI and date range; one transaction. Returns the counts."""
    card, ptype, d0, d1 = check_request(card, ptype, start, end)
    collection = CARDS[card][0]
    stats = SyncStats()
    with db.session(settings) as conn:
        wkt = aoi_geometry(conn, settings, aoi)
        params = {
            "productType": ptype,
            "startDate": f"{d0.isoformat()}T00:00:00.000Z",
            "completionDate": f"{d1.isoformat()}T23:59:59.999Z",
            "geometry": wkt,
            "sortParam": "startDate",
            "sortOrder": "ascending",
            "maxRecords": settings.catalog.page_size,
            "exactCount": 0,
        }
        client = Client(settings)
        products: list[Product] = []
        for feature in fetch_window(client, collection, params, settings.catalog.page_size,
                                    settings.catalog.max_offset, stats):
            stats.received += 1
            product = parse_feature(feature)
            if product is None:
                stats.no_geometry += 1
            else:
                products.append(product)
            if progress:
                progress(stats)
        store(conn, settings, card, best_per_scene(products, stats), stats)
    return stats


def summary(conn, settings, aoi: str) -> list[tuple]:
    """The seed's summary: (card, sensor, count, first, last) of the scenes over the AOI."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL(
            "SELECT c.card, c.sensor, count(*), min(c.obstime), max(c.obstime) FROM {cat} c, {aois} a"
            " WHERE a.name = %s AND c.footprint && a.wkb_geometry GROUP BY 1, 2 ORDER BY 1, 2"
        ).format(cat=table(settings, "catalogue"), aois=table(settings, "aois")), (aoi,))
        return cur.fetchall()


def status_counts(conn, settings) -> list[tuple]:
    """The seed's status query: (card, status, count)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT card, status, count(*) FROM {} GROUP BY 1, 2 ORDER BY 1, 2").format(
            table(settings, "catalogue")))
        return cur.fetchall()


def aoi_summary(settings, aoi: str) -> list[tuple]:
    """summary() in a session of its own; an unknown AOI is a UserError."""
    with db.session(settings) as conn:
        aoi_geometry(conn, settings, aoi)
        return summary(conn, settings, aoi)
