"""`cbm parcels load` and `cbm parcels zones`: parcel tables (extractor/parcels.py) and the UTM zones
of the catalogued scenes over an AOI."""

from __future__ import annotations

import argparse
import re
import sys

from cbm import context
from cbm.cli import add_command, add_group
from extractor import db, parcels


def _n(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def _fmt(v: float) -> str:
    return f"{v:.6f}" if abs(v) <= 360 else f"{v:.1f}"


def cmd_load(args) -> int:
    from extractor.parcel_files import open_parcel_file  # lazy: pyogrio, pyarrow, rasterio (~0.4 s), for a file only

    settings = context.settings(args)
    parcels.parcel_table(settings, args.table)          # a bad name fails before the file is read
    source = open_parcel_file(args.file, layer=args.layer, srid=args.srid)
    with _progress(source.features, args) as progress:
        result = parcels.load_parcels(settings, source, args.table, replace=args.replace, progress=progress,
                                      dry_run=args.dry_run)
    verb = "replaced" if result.replaced else "created"
    if args.dry_run:
        print("dry run: nothing was written; a load would give:")
    print(f"loaded {_n(result.loaded, 'parcel')} from {source.describe} into {result.table} ({verb}; "
          f"ogc_fid, {_n(result.columns, 'attribute')}, wkb_geometry MultiPolygon)")
    print(f"repaired {result.repaired} invalid geometr{'y' if result.repaired == 1 else 'ies'} (ST_MakeValid)")
    print(f"skipped {result.skipped_count}" + (f": {result.skipped_text()}" if result.skipped_count else ""))
    print(f"SRID {result.srid}, extent {' '.join(_fmt(v) for v in result.extent)}")
    return 0


class _progress:
    """A progress bar on stderr for long loads (only on a terminal)."""

    def __init__(self, total, args):
        self.total, self.args, self.bar = total, args, None

    def __enter__(self):
        if not sys.stderr.isatty() or getattr(self.args, "quiet", False):
            return None
        from rich.console import Console  # lazy: rich only for a progress bar on a terminal
        from rich.progress import Progress  # lazy: as above

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("reading parcels", total=self.total)
        return lambda done: self.bar.update(task, completed=done)

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()
        return False


def cmd_zones(args) -> int:
    settings = context.settings(args)
    with db.session(settings) as conn:
        zones = parcels.zone_counts(conn, settings, args.aoi, args.card)
    for epsg in zones.epsg:
        print(epsg)
    note = f"; {zones.unknown} without a tile in the name ignored" if zones.unknown else ""
    if zones.scenes == 0:
        print(f"0 UTM zones: no {args.card} scene in {settings.tables.catalogue} intersects AOI {args.aoi}; "
              "run cbm catalog sync first", file=sys.stderr)
    else:
        print(f"{len(zones.epsg)} UTM zone{'s' if len(zones.epsg) != 1 else ''} over AOI {args.aoi} "
              f"(from {zones.scenes} {args.card} scenes{note})", file=sys.stderr)
    return 0


def _epsg_arg(text: str) -> int:
    m = re.fullmatch(r"(?:EPSG:)?(\d{4,6})", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not an EPSG code; give e.g. 25832 or EPSG:25832")
    return int(m.group(1))


def register(sub) -> None:
    """Add the `cbm parcels` commands."""
    group = add_group(sub, "parcels", "parcel tables: load a parcel file, list the UTM zones over an AOI")
    load = add_command(
        group, "load", cmd_load,
        "load a parcel file (Shapefile, GeoPackage, GeoJSON, GeoParquet) into a PostGIS table",
        epilog="The table gets the file's attributes (names lower-cased, other characters than letters, "
               "digits and _ made _), an integer primary key ogc_fid (the GeoPackage fid, else the feature's "
               "position in the file) and wkb_geometry MultiPolygon in the file's own CRS, with a GiST index, "
               "as ogr2ogr -nlt MULTIPOLYGON makes it. Invalid polygons are repaired with ST_MakeValid (their "
               "polygonal parts kept); empty, missing and non-polygon geometries are skipped and reported. "
               "One transaction: on any error the database is left as it was.")
    load.add_argument("file", metavar="FILE", help="the parcel file (.shp, .gpkg, .geojson, .parquet, ...)")
    load.add_argument("--table", required=True, metavar="NAME",
                      help="the table to create (letters, digits, _; lower-cased as ogr2ogr does)")
    load.add_argument("--layer", metavar="L", help="the layer to read, when the file has several")
    load.add_argument("--replace", action="store_true", help="replace the table if it exists (else an error)")
    load.add_argument("--dry-run", action="store_true",
                      help="read, check and repair everything, report, then roll back: nothing is written")
    load.add_argument("--srid", type=_epsg_arg, metavar="EPSG",
                      help="the EPSG code of a file without a CRS (e.g. a shapefile without .prj)")

    zones = add_command(
        group, "zones", cmd_zones, "print the UTM zones (EPSG codes) of the catalog's scenes over an AOI",
        epilog="One EPSG code per line on stdout (326zz north, 327zz south), the count on stderr. The zone of a "
               "scene is its epsg column when the catalog sync filled it, else the MGRS tile in its name "
               "(e.g. T31UFS: zone 31, band U; bands C..M are south). Scenes count when their footprint "
               "intersects the AOI.")
    zones.add_argument("--aoi", required=True, metavar="NAME", help="the AOI name in the aois table")
    zones.add_argument("--card", default="s2", choices=parcels.CARDS, help="the scenes to look at (default s2)")
