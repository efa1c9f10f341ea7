"""`cbm schedule SPEC`: the continuous mode (provision/ops/schedule.py): a job on the deployment's manager
that syncs the catalog and extracts the new scenes every period; `--off` removes it, `--run-now` runs it
at once and waits for the outcome. `cbm status SPEC` shows its last and next run."""

from __future__ import annotations

from cbm import context
from cbm.cli import add_command
from cbm.terminal import human_duration
from extractor.errors import UserError
from provision.ops import schedule


def describe_run(row: dict) -> str:
    """One line: run 3 (request): ok in 42 s; 1 new product(s), 3 scene run(s) extracted, 0 failed."""
    took = (row["finished_at"] - row["started_at"]).total_seconds() if row["finished_at"] else None
    line = f"run {row['id']} ({row['trigger']}): {row['outcome']}" + (f" in {human_duration(took)}" if took else "")
    if row["outcome"] != "skipped":
        line += (f"; {row['products']} new product(s), {row['scenes']} scene run(s) extracted, "
                 f"{row['failed']} failed")
    if row["detail"]:
        line += f"; {row['detail']}"
    if row["log"]:
        line += f" (log on the manager: {row['log']})"
    return line


def cmd_schedule(args) -> int:
    spec = context.deployment_of(args)
    if not spec:
        raise UserError("cbm schedule: name the deployment (SPEC, --deployment or $CBM_DEPLOYMENT)")
    say = lambda line: print(line, flush=True)  # noqa: E731
    chosen = [name for name, on in (("--off", args.off), ("--run-now", args.run_now),
                                    ("--every", args.every is not None)) if on]
    if len(chosen) != 1:
        raise UserError("cbm schedule: give --cards and --every (set the job), --off or --run-now, one of them")
    if args.run_now and args.check:
        raise UserError("cbm schedule: --check goes with --cards/--every or --off, not with --run-now")
    if args.every is not None and not args.cards:
        raise UserError("cbm schedule: --every needs --cards (e.g. --cards s2,bs,c6)")
    if args.off:
        had = schedule.off(spec, check=args.check, config=args.config, out=say)
        say(("would remove" if args.check else "removed") + (" the schedule and its job" if had else " the job (there was no schedule)"))
        return 0
    if args.run_now:
        row = schedule.run_now(spec, config=args.config, out=say)
        say(describe_run(row))
        return 0 if row["outcome"] == "ok" else 1
    plan = schedule.install(spec, args.cards, args.every, args.lookback, check=args.check, config=args.config, out=say)
    say(f"{'would run' if args.check else 'runs'} every {args.every}: cards {', '.join(plan.cards)} over AOI {plan.aoi} "
        f"(parcels {plan.parcels}), catalog synced from {plan.synced_to} minus {args.lookback} for late products; "
        "see cbm status for its runs")
    return 0


def register(sub) -> None:
    p = add_command(sub, "schedule", cmd_schedule,
                    help="continuous mode: a job on the deployment that syncs the catalog and extracts new scenes "
                         "every period (--off removes it, --run-now runs it at once)")
    p.add_argument("spec", metavar="SPEC", nargs="?", help="deployment spec (default: --deployment, $CBM_DEPLOYMENT)")
    p.add_argument("--cards", metavar="CARDS", help="comma-separated cards, run in the seed's order (s2, bs, c6)")
    p.add_argument("--every", metavar="DURATION", help="period of the runs: 30m, 6h, 1d, 1w ...")
    p.add_argument("--lookback", metavar="DURATION", default="10d",
                   help="the sync starts this long before the last synced day, for products published late "
                        "(default 10d)")
    p.add_argument("--off", action="store_true", help="remove the job and the schedule (the runs' records stay)")
    p.add_argument("--run-now", action="store_true", help="run the job now and wait for its outcome (exit 1 unless ok)")
    p.add_argument("--check", action="store_true", help="report what would change on the manager, change nothing")
