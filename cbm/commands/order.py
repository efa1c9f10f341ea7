"""`cbm order s1|status|cancel`: Sentinel-1 CARD products ordered from the CDSE On-Demand Production
API (extractor/orders.py, extractor/odp.py). Completed orders' products come into dias_catalogue with
`cbm catalog sync`, then are extracted like any other."""

from __future__ import annotations

import sys

from cbm import context
from cbm.cli import add_command, add_group
from cbm.commands.catalog import print_table
from extractor import odp, orders
from extractor.errors import CbmError, UserError
from extractor.order_inputs import CARDS


def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M") if t else "-"


def cmd_s1(args) -> int:
    if args.max is not None and args.max < 1:
        raise UserError(f"--max {args.max}: pass at least 1, or leave it out to order everything")
    settings = context.settings(args)
    client = None
    if not args.dry_run:
        client = odp.Client(settings)          # no account: say so before asking the catalog
        orders.resolve_in_doubt(settings, client)
    p = orders.plan(settings, args.aoi, args.start, args.end, args.card, args.retry_failed)
    todo = p.to_order if args.max is None else p.to_order[:args.max]
    counts = (f"{CARDS[p.card][0]} inputs of {p.card} over {p.aoi} {p.start}..{p.end}: found {p.found}"
              f" ({len(p.dropped)} other-timeliness duplicates dropped), existing {len(p.existing)},"
              f" already ordered {len(p.ordered)}, to order {len(p.to_order)}")
    if args.dry_run:
        for i in todo:
            print(i.name)
        more = f"; --max {args.max}: {len(todo)} listed" if len(todo) < len(p.to_order) else ""
        print(f"{counts}{more} (dry run: nothing ordered)", file=sys.stderr)
        return 0
    print(counts, flush=True)
    again = f"cbm order s1 {p.aoi} {p.start} {p.end} --card {p.card}"
    try:
        placed = orders.place(settings, p, client, args.max,
                              progress=lambda n, total: print(f"  ordered {n}/{total}", flush=True))
    except orders.OrderStopped as exc:
        raise CbmError(f"{exc.reason}; {exc.placed} ordered in this run, {exc.left} not ordered; "
                       f"to order the rest, run again when the service allows (e.g. the monthly quota is "
                       f"renewed): {again}") from None
    if not placed.batches and not placed.taken_elsewhere:
        print("nothing to order")
        return 0
    print(f"ordered {placed.ordered} in {len(placed.batches)} batch order(s)"
          + (f" ({', '.join(placed.batches)})" if placed.batches else "")
          + (f"; {placed.taken_elsewhere} ordered meanwhile by another run" if placed.taken_elsewhere else "")
          + (f"; {placed.left} left by --max (run again to order them)" if placed.left else ""))
    if placed.ordered:
        print(f"follow them with: cbm order status --refresh; their products come in with: "
              f"cbm catalog sync {p.aoi} {p.start} {p.end} {p.card}")
    return 0


def cmd_status(args) -> int:
    settings = context.settings(args)
    if args.refresh:
        client = odp.Client(settings)
        orders.resolve_in_doubt(settings, client)
        moved = orders.refresh(settings, client)
        print("refreshed from the service: " + (", ".join(f"{n} now {s}" for s, n in sorted(moved.items()))
                                                 or "no change"))
    r = orders.report(settings)
    if not r.counts:
        print("no orders yet (cbm order s1 AOI START END --card bs|c6|c12)")
        return 0
    print_table("orders by card and status", ["card", "status", "count"], r.counts)
    if r.waiting:
        print("oldest waiting:")
        for name, card, status, submitted, message in r.waiting:
            print(f"  {name} ({card}) {status} since {_when(submitted)}" + (f": {message}" if message else ""))
    if r.failed:
        print("failed (order them again with: cbm order s1 AOI START END --card CARD --retry-failed):")
        for name, card, when, message in r.failed:
            print(f"  {name} ({card}) at {_when(when)}: {message or 'no message'}")
    for card, aoi, done, catalogued, extracted, first, last in r.completed:
        line = f"{card}: {done} completed, {catalogued} in dias_catalogue, {extracted} extracted"
        if first is not None:
            line += f"; bring the others in with: cbm catalog sync {aoi} {first:%Y-%m-%d} {last:%Y-%m-%d} {card}"
        print(line)
    return 0


def cmd_cancel(args) -> int:
    if not args.inputs and not args.all:
        raise UserError("cbm order cancel: name the input products whose orders to cancel, or pass --all "
                        "(with --card to keep to one card)")
    settings = context.settings(args)
    out = orders.cancel(settings, odp.Client(settings), args.inputs, args.card)
    parts = [f"{out['cancelled']} cancelled"]
    if out["running"]:
        parts.append(f"{out['running']} already in production (they complete)")
    if out["unknown"]:
        parts.append(f"{out['unknown']} not yet known to the service (run cbm order status --refresh, then again)")
    if out["not waiting"]:
        parts.append(f"{out['not waiting']} named input(s) without a waiting order")
    print(f"cancel: {out['asked']} waiting order(s): " + ", ".join(parts))
    return 0


def register(sub) -> None:
    group = add_group(sub, "order", "Sentinel-1 CARD products ordered from the CDSE On-Demand Production API")
    p = add_command(group, "s1", cmd_s1, "order the CARD products missing over an AOI and period "
                                         "(IW GRD -> CARD-BS, IW SLC -> CARD-COH6/12)")
    p.add_argument("aoi", metavar="AOI", help="name of the AOI in the aois table")
    p.add_argument("start", metavar="START", help="first day, YYYY-MM-DD")
    p.add_argument("end", metavar="END", help="last day (included), YYYY-MM-DD")
    p.add_argument("--card", required=True, choices=list(CARDS), help="the CARD product to order")
    p.add_argument("--dry-run", action="store_true",
                   help="list the inputs that would be ordered (names on stdout, counts on stderr); order nothing")
    p.add_argument("--max", type=int, metavar="N", help="order at most N inputs in this run")
    p.add_argument("--retry-failed", action="store_true",
                   help="order again the inputs whose last order failed or was cancelled")
    p = add_command(group, "status", cmd_status, "the orders by status, the oldest waiting, the failed")
    p.add_argument("--refresh", action="store_true", help="first read the waiting orders' states from the service")
    p = add_command(group, "cancel", cmd_cancel, "cancel waiting orders")
    p.add_argument("inputs", metavar="INPUT", nargs="*", help="input product names (as cbm order s1 --dry-run lists)")
    p.add_argument("--all", action="store_true", help="cancel every waiting order")
    p.add_argument("--card", choices=list(CARDS), help="only the orders of this card")
