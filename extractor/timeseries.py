"""The time series of a few parcels (`cbm timeseries`): their observations from sigs joined with the
catalogue, plus the quantities derived from the band statistics.

One query per call, index-supported by pid (sigs and hists are both indexed on pid): the parcels'
sigs rows joined with the catalogue (obstime, reference, card, processing_baseline), filtered by card
and dates, with each S2 observation's SCL histogram from hists. Derived here, in pure functions:

* **NDVI** = (B08 - B04) / (B08 + B04) from the band *means* (sigs hold band statistics, not pixels,
  so it is the NDVI of the parcel's mean reflectances, not a mean of pixel NDVIs). sigs hold raw DN;
  from processing baseline 04.00 on, L2A reflectance is (DN + BOA_ADD_OFFSET) / 10000 with
  BOA_ADD_OFFSET = -1000 (MTD_MSIL2A.xml, BOA_ADD_OFFSET_VALUES_LIST, the same for every band). The
  offset does not cancel in the ratio, so it is added to both means first. Older baselines and
  CloudFerro's N9999 stand-ins (processing baseline 99.99, no offset list in their metadata) have no
  offset; a scene without a known baseline (none stored, none in the S2 title) is taken as offset-free.
  count is the smaller count of B04 and B08; the other statistics stay empty (the NDVI of a
  percentile is not a percentile of NDVI).
* **Clear or cloudy**: the share of the parcel's SCL pixels in the clear classes 4 (vegetation),
  5 (not vegetated / bare soil) and 6 (water), among all its SCL pixels in the hists row (classes
  1..11; 0 = no data is never counted, docs/extraction.md). Scene classification values after the
  CDSE documentation, Sentinel-2 L2A (APIs/SentinelHub/Data/S2L2A.qmd): 0 no data, 1 saturated or
  defective, 2 dark area pixels, 3 cloud shadows, 4 vegetation, 5 not vegetated (bare soils),
  6 water, 7 unclassified, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus,
  11 snow or ice. An observation is clear when that share is at least the threshold; an S2
  observation without a hists row has no flag.
* **dB** of CARD-BS backscatter (linear gamma0): 10 * log10(value) of mean, min, max and the
  percentiles (std has no dB form; values <= 0 have none). The dB of the mean is not the mean of the
  pixels' dB. Coherence (c6) stays linear.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field

from psycopg2 import sql

from extractor import db
from extractor.catalog import ESA_STANDIN_BASELINE, baseline_of
from extractor.errors import UserError
from extractor.parcels import parcel_table, require_table

CARDS = ("s2", "bs", "c6")
BOA_ADD_OFFSET = -1000.0          # DN added before / 10000 from processing baseline 04.00 on
QUANTIFICATION = 10000.0          # BOA_QUANTIFICATION_VALUE
OFFSET_SINCE_BASELINE = 4.0
CLEAR_CLASSES = (4, 5, 6)         # SCL vegetation, bare soils, water
DEFAULT_CLEAR_THRESHOLD = 0.9
RED, NIR = "B04", "B08"
DB_CARDS = ("bs",)                # backscatter: dB bands <band>_db
STATS = ("count", "mean", "std", "min", "max", "p25", "p50", "p75")
COLUMNS = ("pid", "obstime", "reference", "card", "processing_baseline", "band", *STATS, "clear_share", "clear")


# -- the derived quantities (pure) -------------------------------------------------------------
def boa_offset(baseline: float | None, reference: str = "") -> float:
    """The BOA_ADD_OFFSET of an S2 L2A product: -1000 from baseline 04.00 on (ESA), else 0."""
    b = baseline_of(reference or "", baseline)
    if b is None:
        return 0.0
    b = round(b, 2)   # processing_baseline is a real: 4.0 and 99.99 come back as stored
    return BOA_ADD_OFFSET if OFFSET_SINCE_BASELINE <= b < ESA_STANDIN_BASELINE else 0.0


def reflectance(dn: float | None, offset: float) -> float | None:
    return None if dn is None else (dn + offset) / QUANTIFICATION


def ndvi(red_mean: float | None, nir_mean: float | None, offset: float) -> float | None:
    """NDVI of the band means, the offset added to both; None when undefined (sum of reflectances <= 0)."""
    if red_mean is None or nir_mean is None:
        return None
    red, nir = red_mean + offset, nir_mean + offset
    return (nir - red) / (nir + red) if nir + red > 0 else None


def to_db(linear: float | None) -> float | None:
    return 10.0 * math.log10(linear) if linear is not None and linear > 0 else None


def clear_share(hist: dict | str | None) -> float | None:
    """Share of the SCL pixels in CLEAR_CLASSES; hist as hists holds it ({"4": 120, "9": 3})."""
    if hist is None:
        return None
    counts = json.loads(hist) if isinstance(hist, str) else hist
    total = sum(int(n) for k, n in counts.items() if int(k) != 0)
    if total <= 0:
        return None
    return sum(int(n) for k, n in counts.items() if int(k) in CLEAR_CLASSES) / total


# -- the observations --------------------------------------------------------------------------
@dataclass
class Row:
    """One CSV row: a band of an observation of a parcel (a sigs row, or a derived band)."""
    pid: int
    obstime: dt.datetime
    reference: str
    card: str
    processing_baseline: float | None
    band: str
    count: float | None = None
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    p25: float | None = None
    p50: float | None = None
    p75: float | None = None
    clear_share: float | None = None
    clear: bool | None = None
    offset: float = 0.0            # the S2 BOA offset of the observation (not a CSV column)
    derived: bool = False          # NDVI, *_db (not in sigs)


@dataclass
class Observation:
    pid: int
    obsid: int
    obstime: dt.datetime
    reference: str
    card: str
    baseline: float | None
    hist: str | None = None
    bands: list[Row] = field(default_factory=list)


def derive(obs: Observation, threshold: float) -> list[Row]:
    """The observation's sigs rows, the clear flag on S2 ones, then its derived bands."""
    share = clear_share(obs.hist) if obs.card == "s2" else None
    flag = None if share is None else share >= threshold
    offset = boa_offset(obs.baseline, obs.reference) if obs.card == "s2" else 0.0
    out = []
    for row in obs.bands:
        row.clear_share, row.clear, row.offset = share, flag, offset
        out.append(row)
    base = dict(pid=obs.pid, obstime=obs.obstime, reference=obs.reference, card=obs.card,
                processing_baseline=obs.baseline, clear_share=share, clear=flag, offset=offset, derived=True)
    by_band = {r.band: r for r in obs.bands}
    if obs.card == "s2" and RED in by_band and NIR in by_band:
        red, nir = by_band[RED], by_band[NIR]
        counts = [c for c in (red.count, nir.count) if c is not None]
        out.append(Row(band="NDVI", count=min(counts) if counts else None, mean=ndvi(red.mean, nir.mean, offset),
                       **base))
    if obs.card in DB_CARDS:
        for row in obs.bands:
            out.append(Row(band=f"{row.band}_db", count=row.count, **base,
                           **{k: to_db(getattr(row, k)) for k in ("mean", "min", "max", "p25", "p50", "p75")}))
    return out


# -- the query ---------------------------------------------------------------------------------
def series_query(settings, pids: list[int], cards: tuple[str, ...], start: dt.date | None = None,
                 end: dt.date | None = None) -> tuple[sql.Composed, dict]:
    """The one query: sigs rows of the pids (index on pid) with their catalogue row and the S2 hists
    row; `end` is inclusive (obstime before the next day)."""
    where = [sql.SQL("s.pid = ANY(%(pids)s)"), sql.SQL("c.card = ANY(%(cards)s)")]
    params: dict = {"pids": list(pids), "cards": list(cards)}
    if start is not None:
        where.append(sql.SQL("c.obstime >= %(start)s"))
        params["start"] = dt.datetime.combine(start, dt.time())
    if end is not None:
        where.append(sql.SQL("c.obstime < %(end)s"))
        params["end"] = dt.datetime.combine(end + dt.timedelta(days=1), dt.time())
    if "s2" in cards:
        hist = sql.SQL(
            " LEFT JOIN (SELECT DISTINCT ON (pid, obsid) pid, obsid, hist FROM {hists}"
            " WHERE pid = ANY(%(pids)s) ORDER BY pid, obsid) h ON h.pid = s.pid AND h.obsid = s.obsid"
        ).format(hists=db.table(settings, "hists"))
        hist_col = sql.SQL("h.hist::text")
    else:
        hist, hist_col = sql.SQL(""), sql.SQL("NULL::text")
    query = sql.SQL(
        "SELECT s.pid, s.obsid, c.obstime, c.reference, trim(c.card), c.processing_baseline, trim(s.band),"
        " s.count, s.mean, s.std, s.min, s.max, s.p25, s.p50, s.p75, {hist_col}"
        " FROM {sigs} s JOIN {cat} c ON c.id = s.obsid{hist}"
        " WHERE {where} ORDER BY s.pid, c.obstime, c.reference, s.obsid, s.band"
    ).format(hist_col=hist_col, sigs=db.table(settings, "sigs"), cat=db.table(settings, "catalogue"), hist=hist,
             where=sql.SQL(" AND ").join(where))
    return query, params


def check_parcels(conn, settings, parcels: str, pids: list[int]) -> str:
    """The parcel table's name; UserError naming the table or the pids that are not in it (ogc_fid)."""
    name, quoted = parcel_table(settings, parcels)
    where = f"{settings.db.schema}.{name}"
    if not db.table_exists(conn, settings, name):
        raise UserError(f"parcel table {where} does not exist in {db.describe(settings)}; "
                        "give the table the parcels were loaded into (cbm parcels load FILE TABLE)")
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                    " AND column_name = 'ogc_fid'", (settings.db.schema, name))
        if cur.fetchone() is None:
            raise UserError(f"parcel table {where} has no ogc_fid column (the pid of sigs); "
                            "load it with cbm parcels load")
        cur.execute(sql.SQL("SELECT ogc_fid FROM {} WHERE ogc_fid = ANY(%s)").format(quoted), (list(pids),))
        found = {r[0] for r in cur.fetchall()}
    missing = [p for p in dict.fromkeys(pids) if p not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UserError(f"parcel{'s' if len(missing) > 1 else ''} {shown} not in {where} (ogc_fid); "
                        "give pids of that table")
    return name


def series(conn, settings, parcels: str, pids: list[int], cards: tuple[str, ...] = CARDS,
           start: dt.date | None = None, end: dt.date | None = None,
           threshold: float = DEFAULT_CLEAR_THRESHOLD) -> list[Row]:
    """The CSV rows of the parcels' observations, ordered by pid, obstime, reference, band (sigs bands
    first, then the derived ones)."""
    if not pids:
        raise UserError("give at least one parcel id (PID)")
    if not 0.0 <= threshold <= 1.0:
        raise UserError(f"--clear-threshold {threshold}: give a share between 0 and 1 (e.g. 0.9)")
    if start is not None and end is not None and end < start:
        raise UserError(f"--to {end} is before --from {start}; swap them")
    unknown = [c for c in cards if c not in CARDS]
    if unknown:
        raise UserError(f"card {unknown[0]!r} has no time series; use one of {', '.join(CARDS)}")
    for key in ("catalogue", "sigs") + (("hists",) if "s2" in cards else ()):
        require_table(conn, settings, key)
    check_parcels(conn, settings, parcels, pids)
    query, params = series_query(settings, pids, cards, start, end)
    with conn.cursor() as cur:
        cur.execute(query, params)
        records = cur.fetchall()
    rows: list[Row] = []
    obs: Observation | None = None
    for pid, obsid, obstime, reference, card, baseline, band, *rest in records:
        stats, hist = rest[:len(STATS)], rest[len(STATS)]
        if obs is None or (obs.pid, obs.obsid) != (pid, obsid):
            if obs is not None:
                rows.extend(derive(obs, threshold))
            obs = Observation(pid, obsid, obstime, reference, card, baseline, hist)
        obs.bands.append(Row(pid=pid, obstime=obstime, reference=reference, card=card,
                             processing_baseline=baseline, band=band, **dict(zip(STATS, stats))))
    if obs is not None:
        rows.extend(derive(obs, threshold))
    return rows
