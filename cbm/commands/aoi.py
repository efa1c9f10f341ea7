"""`cbm aoi add` and `cbm aoi list`: the areas of interest (extractor/aoi.py)."""

from __future__ import annotations

import sys

from cbm import context
from cbm.cli import add_command, add_group
from extractor import aoi, db


def cmd_add(args) -> int:
    settings = context.settings(args)
    how, (_, xmin, ymin, xmax, ymax, km2) = aoi.add(settings, args.name, from_parcels=args.from_parcels,
                                                    geojson=args.geojson, replace=args.replace,
                                                    dry_run=args.dry_run)
    if args.dry_run:
        print("dry run: nothing was written; the AOI would be:")
    print(f"AOI {args.name}: {how}; lon {xmin:.5f}..{xmax:.5f}, lat {ymin:.5f}..{ymax:.5f}, {km2:,.1f} km2")
    return 0


def cmd_list(args) -> int:
    settings = context.settings(args)
    with db.session(settings) as conn:
        rows = aoi.list_aois(conn, settings)
    if not rows:
        print("no AOIs yet; add one with cbm aoi add NAME --from-parcels TABLE (or --geojson FILE)", file=sys.stderr)
        return 0
    width = max(4, *(len(r[0] or "") for r in rows))
    print(f"{'name':<{width}}  {'lon min':>11} {'lat min':>10} {'lon max':>11} {'lat max':>10} {'km2':>12}")
    for name, xmin, ymin, xmax, ymax, km2 in rows:
        if xmin is None:
            print(f"{name or '':<{width}}  (no geometry)")
            continue
        print(f"{name or '':<{width}}  {xmin:>11.5f} {ymin:>10.5f} {xmax:>11.5f} {ymax:>10.5f} {km2:>12,.1f}")
    return 0


def register(sub) -> None:
    """Add the `cbm aoi` commands."""
    group = add_group(sub, "aoi", "areas of interest (the aois table): add, list")
    add = add_command(
        group, "add", cmd_add, "add an AOI from the extent of a parcel table or from a GeoJSON file",
        epilog="--from-parcels: the extent of the parcels as a lon/lat (EPSG:4326) rectangle that contains "
               "every parcel (the projected extent's edges are densified before transforming). "
               "--geojson: a Polygon, MultiPolygon, Feature or FeatureCollection in EPSG:4326; one Polygon is "
               "stored as it is, a MultiPolygon or several features become the convex hull of all polygons.")
    add.add_argument("name", metavar="NAME", help="the AOI name (lower-case letters, digits, _)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-parcels", metavar="TABLE", help="a parcel table loaded with cbm parcels load")
    source.add_argument("--geojson", metavar="FILE", help="a GeoJSON polygon file in EPSG:4326")
    add.add_argument("--replace", action="store_true", help="overwrite an existing AOI of that name")
    add.add_argument("--dry-run", action="store_true", help="compute and show the AOI, write nothing")
    add_command(group, "list", cmd_list, "list the AOIs with their lon/lat bounds and area")
