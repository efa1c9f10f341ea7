"""`cbm onboard SPEC`: the data side of onboarding a Member State on a deployment, in one command.

Steps, each also a command of its own (with `--deployment SPEC`), each skipped when already done:
  1. load the parcels into the deployment's PostGIS      cbm parcels load FILE --table T
  2. add the AOI from the parcels' extent                cbm aoi add NAME --from-parcels T
  3. sync the catalog for each card                      cbm catalog sync NAME FROM TO CARD
  4. rasterize the parcels for the grids of the scenes   cbm extract prepare
  5. print the catalog summary                           cbm catalog summary NAME
The choices (AOI, parcel table, dates, cards) are remembered in the deployment's state folder
(onboarding.yml) and are the defaults of `cbm extract swarm SPEC`.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import yaml

from extractor import aoi as aois
from extractor import catalog, db
from extractor.extract import prepare
from extractor.parcel_files import open_parcel_file
from extractor.parcels import load_parcels, parcel_table
from provision.hosts.files import write_private
from provision.ops import deployment


@dataclass
class Onboarded:
    deployment: str
    times: dict[str, float] = field(default_factory=dict)   # seconds per step
    catalog: list[tuple] = field(default_factory=list)       # (card, sensor, count, first, last)


def read_record(dep) -> dict:
    path = dep.files.onboarding
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def write_record(dep, record: dict) -> None:
    write_private(dep.files.onboarding, yaml.safe_dump(record, sort_keys=False))


def extraction_end(to: str) -> str:
    """The catalog's END is a day included; the extraction filter's end is exclusive."""
    return (dt.date.fromisoformat(to) + dt.timedelta(days=1)).isoformat()


def onboard(spec_path: str, parcels_file: str, aoi: str, start: str, end: str, cards: list[str],
            table: str | None = None, replace: bool = False, config: str | None = None, out=print) -> Onboarded:
    """Run the steps (each skipped when done); `out` gets a line per step and result."""
    catalog.check_request(cards[0], None, start, end)
    for card in cards:
        catalog.check_request(card, None, start, end)
    aois.check_aoi_name(aoi)
    table = table or f"{aoi}_parcels"
    dep = deployment.load(spec_path)
    settings = deployment.deployment_settings(spec_path, config)
    parcel_table(settings, table)
    times: dict[str, float] = {}

    def step(name: str):
        out(f"== {name}")
        return time.monotonic()

    t = step(f"parcels: {parcels_file} -> {table}")
    with db.session(settings) as conn:
        loaded = db.table_exists(conn, settings, table)
    if loaded and not replace:
        out(f"   already loaded (table {table} exists; --replace to load again)")
    else:
        source = open_parcel_file(parcels_file)
        result = load_parcels(settings, source, table, replace=replace)
        out(f"   loaded {result.loaded} parcels, repaired {result.repaired}, skipped {result.skipped_count}"
            f" (SRID {result.srid})")
    times["parcels"] = time.monotonic() - t

    t = step(f"AOI {aoi} from the parcels' extent")
    with db.session(settings) as conn:
        known = {name for name, *_ in aois.list_aois(conn, settings)}
        if aoi in known and not replace:
            out("   already there (--replace to redo it)")
        else:
            out(f"   {aois.add_from_parcels(conn, settings, aoi, table, replace=aoi in known)}")
    times["aoi"] = time.monotonic() - t

    for card in cards:
        t = step(f"catalog sync {aoi} {start} {end} {card}")
        stats = catalog.sync(settings, aoi, start, end, card)
        out(f"   {stats.received} received, {stats.inserted} new, {stats.known} already known, "
            f"{stats.lower_baseline} duplicate baselines skipped, {stats.no_geometry} without footprint")
        times[f"catalog {card}"] = time.monotonic() - t

    t = step("rasterize the parcels for the scenes' grids")
    conn = db.connect(settings)
    try:
        for line in prepare.prepare(conn, settings, aoi=aoi, parcels=table, start=start,
                                    end=extraction_end(end), cards_wanted=[c for c in cards if c != "c12"]):
            out(f"   {line}")
    finally:
        conn.close()
    times["prepare"] = time.monotonic() - t

    write_record(dep, {"aoi": aoi, "parcels": table, "start": start, "end": end, "cards": cards})
    with db.session(settings) as conn:
        rows = catalog.summary(conn, settings, aoi)
    return Onboarded(dep.name, times, rows)
