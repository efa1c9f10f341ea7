"""`cbm fleet status|upgrade|schedule SPEC... [--jobs N]`: a command over several deployments
(provision/ops/fleet.py), e.g. `cbm fleet status inventories/*/deployment.yml`.

Each deployment runs the single command (`cbm status SPEC`, `cbm upgrade SPEC --yes ...`,
`cbm schedule SPEC ...`) in a subprocess, at most N at a time; a line on stderr as each starts (with
its log) and ends; one summary table at the end. Exit code 0 only when every deployment succeeded, 1
otherwise. `fleet upgrade` asks once for all (or --yes) and passes --yes on; `fleet schedule` passes
everything after `--` to `cbm schedule`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cbm.cli import add_command, add_group
from cbm.terminal import confirm, human_duration
from extractor.errors import UserError
from provision.ops import fleet

REFUSAL = "fleet upgrade: refusing to upgrade without confirmation: run it on a terminal or pass --yes"


def _home(path) -> str:
    """A path with the home folder as ~ (shorter in the table)."""
    text, home = str(path), str(Path.home())
    return "~" + text[len(home):] if text.startswith(home + "/") else text


def outcome_text(o: fleet.Outcome) -> str:
    if o.ok:
        return "ok"
    return "not run" if o.rc == fleet.NOT_RUN else f"failed (exit {o.rc})"


def summary(outcomes: list[fleet.Outcome], command: str) -> Table:
    ok = sum(o.ok for o in outcomes)
    t = Table(title=f"fleet {command}: {ok} of {len(outcomes)} deployments succeeded", title_justify="left",
              title_style="bold")
    for column in ("deployment", "outcome", "duration", "detail", "log"):
        t.add_column(column, justify="right" if column == "duration" else "left",
                     overflow="fold", no_wrap=column in ("outcome", "duration"))
    for o in outcomes:
        t.add_row(*(escape(c) for c in (o.label, outcome_text(o), human_duration(o.seconds) if o.log else "-",
                                          o.detail, _home(o.log) if o.log else "-")),
                  style=None if o.ok else "yellow")
    return t


def split_forwarded(items: list[str]) -> tuple[list[str], list[str]]:
    """`SPEC... -- ARGS`: argparse hands both as one list (the `--` removed); specs never start with -."""
    for k, item in enumerate(items):
        if item == "--" or item.startswith("-"):
            return items[:k], [i for i in items[k:] if i != "--"]
    return items, []


def _run(args, command: str, extra: list[str]) -> int:
    specs = args.specs
    if command == "schedule":
        specs, extra = split_forwarded(specs)
        if not extra:
            raise UserError("fleet schedule: give the arguments of cbm schedule after --, e.g. "
                            "cbm fleet schedule inventories/*/deployment.yml -- --cards s2,bs,c6 --every 1d")
    if not specs:
        raise UserError(f"fleet {command}: give at least one deployment spec (e.g. inventories/*/deployment.yml)")
    prefix = f"fleet {command}:"

    def started(target) -> None:
        print(f"{prefix} {target.name} started, log {_home(target.log)}", file=sys.stderr, flush=True)

    def done(o) -> None:
        took = f" in {human_duration(o.seconds)}" if o.log else ""
        print(f"{prefix} {o.label} {outcome_text(o)}{took}", file=sys.stderr, flush=True)

    outcomes = fleet.run(specs, command, extra, jobs=args.jobs, config=args.config, on_start=started, on_done=done)
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    console.print(summary(outcomes, command))
    return fleet.exit_code(outcomes)


def cmd_status(args) -> int:
    return _run(args, "status", [])


def cmd_upgrade(args) -> int:
    extra = ["--batch", str(args.batch), "--yes"] + (["--check"] if args.check else []) \
        + (["--no-backup"] if args.no_backup else [])
    if not args.yes and not args.check:
        found = fleet.expand(args.specs)
        if not confirm(f"Upgrade {len(found)} deployment(s) ({', '.join(found)}), {args.jobs} at a time: each backs "
                       f"up its database{' (not: --no-backup)' if args.no_backup else ''}, upgrades and reboots "
                       "its hosts (cbm upgrade SPEC)?", REFUSAL):
            raise UserError("fleet upgrade: cancelled, nothing was changed")
    return _run(args, "upgrade", extra)


def cmd_schedule(args) -> int:
    return _run(args, "schedule", [])


def register(sub) -> None:
    group = add_group(sub, "fleet", "a command over several deployments (status, upgrade, schedule), N at a time, "
                                    "with one summary table")
    jobs_help = f"deployments at the same time (default {fleet.DEFAULT_JOBS})"
    specs_help = "deployment specs (e.g. inventories/*/deployment.yml)"
    p = add_command(group, "status", cmd_status, help="cbm status of each deployment")
    p.add_argument("specs", metavar="SPEC", nargs="+", help=specs_help)
    p.add_argument("--jobs", metavar="N", type=int, default=fleet.DEFAULT_JOBS, help=jobs_help)

    p = add_command(group, "upgrade", cmd_upgrade, help="cbm upgrade of each deployment (asks once for all)")
    p.add_argument("specs", metavar="SPEC", nargs="+", help=specs_help)
    p.add_argument("--jobs", metavar="N", type=int, default=fleet.DEFAULT_JOBS, help=jobs_help)
    p.add_argument("--batch", metavar="N", type=int, default=1, help="cbm upgrade --batch (workers at a time)")
    p.add_argument("--check", action="store_true", help="cbm upgrade --check (report what would change)")
    p.add_argument("--no-backup", action="store_true", help="cbm upgrade --no-backup")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = add_command(group, "schedule", cmd_schedule,
                    help="cbm schedule of each deployment: SPEC... -- the arguments of cbm schedule")
    p.add_argument("specs", metavar="SPEC", nargs="+",
                   help=f"{specs_help}, then -- and the arguments of cbm schedule (e.g. -- --cards s2 --every 1d)")
    p.add_argument("--jobs", metavar="N", type=int, default=fleet.DEFAULT_JOBS, help=jobs_help)
