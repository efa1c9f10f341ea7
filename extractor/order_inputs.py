"""The inputs of a CARD order: the Sentinel-1 products over an AOI and period in the CDSE catalog.

CARD-BS is made from an IW GRD, CARD-COH6 and CARD-COH12 from an IW SLC (the service pairs it with
the acquisition 6 or 12 days before). The product of an input is named after it: the input's name
without `.SAFE`, plus `_CARD_BS` (documented for CARD-BS; by analogy `_CARD_COH6`, `_CARD_COH12`).

One input per acquisition: the catalog lists some acquisitions twice, sliced and processed with two
timeliness values (e.g. a datatake as NRT-3h and as Fast-24h, slices starting seconds apart). The
products of one datatake (platform, absolute orbit, datatake id in the name) keep one timeliness:
NRT-3h from March 2021, Fast-24h before (the rule of the seed's ordering procedure: all Level-1
data is NRT-3h since March 2021); when a datatake has none of that one, the other of the two, then
any other value.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from psycopg2 import sql

from extractor import catalog
from extractor.db import table
from extractor.errors import UserError

# card -> (input product type asked from resto, CARD product type, suffix of the product's name)
CARDS = {"bs": ("GRD", "CARD-BS", "_CARD_BS"), "c6": ("SLC", "CARD-COH6", "_CARD_COH6"),
         "c12": ("SLC", "CARD-COH12", "_CARD_COH12")}
NRT_SINCE = dt.datetime(2021, 3, 1)
TIMELINESS = ("NRT-3h", "Fast-24h")
S1_TITLE = re.compile(r"^(S1[A-D])_[A-Z0-9]{2}_[A-Z_]{4}_\w{4}_(\d{8}T\d{6})_\d{8}T\d{6}_(\d{6})_([0-9A-F]{6})_")


@dataclass
class Input:
    name: str                 # the catalog's title, e.g. S1A_IW_GRDH_1SDV_..._B4FC.SAFE
    obstime: dt.datetime
    timeliness: str | None
    footprint: str            # GeoJSON text

    @property
    def datatake(self) -> tuple:
        m = S1_TITLE.match(self.name)
        return (m.group(1), m.group(3), m.group(4)) if m else (self.name,)

    def product(self, card: str) -> str:
        """The name of the CARD product made from this input."""
        stem = self.name[:-5] if self.name.endswith(".SAFE") else self.name
        return stem + CARDS[card][2]


def check_card(card: str) -> None:
    if card not in CARDS:
        raise UserError(f"--card {card!r} cannot be ordered; use one of {', '.join(CARDS)}")


def preferred(obstime: dt.datetime) -> str:
    return TIMELINESS[0] if obstime >= NRT_SINCE else TIMELINESS[1]


def one_per_acquisition(inputs: list[Input]) -> tuple[list[Input], list[Input]]:
    """(kept, dropped): the products of each datatake keep one timeliness (module docstring)."""
    groups: dict[tuple, list[Input]] = {}
    for i in inputs:
        groups.setdefault(i.datatake, []).append(i)
    kept, dropped = [], []
    for members in groups.values():
        first = preferred(min(m.obstime for m in members))
        order = [first, *(t for t in TIMELINESS if t != first)]
        present = {m.timeliness for m in members}
        choice = next((t for t in order if t in present), None)
        if choice is None:
            choice = sorted(present, key=lambda t: (t is None, t or ""))[0]
        for m in members:
            (kept if m.timeliness == choice else dropped).append(m)
    kept.sort(key=lambda i: (i.obstime, i.name))
    return kept, dropped


def parse(feature: dict) -> Input | None:
    product = catalog.parse_feature(feature)
    if product is None:
        return None
    props = feature.get("properties") or {}
    return Input(name=props["title"], obstime=product.obstime, timeliness=props.get("timeliness"),
                 footprint=product.footprint)


def _features(settings, wkt: str, d0: dt.date, d1: dt.date, ptype: str, extra: dict):
    params = {"productType": ptype, **extra,
              "startDate": f"{d0.isoformat()}T00:00:00.000Z", "completionDate": f"{d1.isoformat()}T23:59:59.999Z",
              "geometry": wkt, "sortParam": "startDate", "sortOrder": "ascending",
              "maxRecords": settings.catalog.page_size, "exactCount": 0}
    yield from catalog.fetch_window(catalog.Client(settings), "Sentinel1", params, settings.catalog.page_size,
                                    settings.catalog.max_offset, catalog.SyncStats())


def catalog_inputs(settings, wkt: str, d0: dt.date, d1: dt.date, card: str) -> tuple[int, list[Input], list[Input]]:
    """(products listed, kept, dropped as the other timeliness of an acquisition)."""
    seen: dict[str, Input] = {}
    for f in _features(settings, wkt, d0, d1, CARDS[card][0], {"sensorMode": "IW"}):
        i = parse(f)
        if i is not None and i.name[4:6] == "IW":
            seen.setdefault(i.name, i)
    kept, dropped = one_per_acquisition(list(seen.values()))
    return len(seen), kept, dropped


def existing_products(conn, settings, wkt: str, d0: dt.date, d1: dt.date, card: str, names: list[str]) -> set[str]:
    """Of the CARD product names, those in the CDSE catalog over the AOI and period or in dias_catalogue."""
    ptype = CARDS[card][1]
    found = {(f.get("properties") or {}).get("title") for f in _features(settings, wkt, d0, d1, ptype, {})
             if (f.get("properties") or {}).get("productType") == ptype}
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT reference FROM {} WHERE reference = ANY(%s)").format(table(settings, "catalogue")),
                    (names,))
        found |= {r[0] for r in cur.fetchall()}
    return found & set(names)
