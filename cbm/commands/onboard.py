"""`cbm onboard SPEC --parcels FILE --aoi NAME --from D --to D [--cards ...]`: the data side of onboarding
a Member State on a deployment, in one command (the steps: provision/ops/onboard.py)."""

from __future__ import annotations

from cbm.cli import add_command
from cbm.commands.catalog import print_table
from extractor.errors import UserError
from provision.ops import onboard


def cmd_onboard(args) -> int:
    cards = [c.strip() for c in args.cards.split(",") if c.strip()]
    if not cards:
        raise UserError("--cards is empty; use e.g. --cards s2,bs,c6")
    done = onboard.onboard(args.spec, args.parcels, args.aoi, args.start, args.end, cards, table=args.table,
                           replace=args.replace, config=args.config, out=lambda line: print(line, flush=True))
    print_table(f"catalog for AOI {args.aoi} on deployment {done.deployment}",
                ["card", "sensor", "count", "first", "last"], done.catalog)
    print("done: " + ", ".join(f"{k} {v:.1f} s" for k, v in done.times.items()))
    return 0


def register(sub) -> None:
    p = add_command(sub, "onboard", cmd_onboard,
                    "load parcels, add the AOI, sync the catalog and rasterize the parcels on a deployment")
    p.add_argument("spec", metavar="SPEC", help="the deployment's deployment.yml")
    p.add_argument("--parcels", required=True, metavar="FILE", help="parcel file (Shapefile, GeoPackage, GeoJSON, GeoParquet)")
    p.add_argument("--aoi", required=True, metavar="NAME", help="name of the AOI (made from the parcels' extent)")
    p.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first day of the catalog")
    p.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="last day of the catalog (included)")
    p.add_argument("--cards", default="s2,bs,c6", help="comma-separated cards (default s2,bs,c6)")
    p.add_argument("--table", help="parcel table (default <AOI>_parcels)")
    p.add_argument("--replace", action="store_true", help="load the parcels and make the AOI again")
