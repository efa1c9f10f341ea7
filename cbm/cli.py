"""The `cbm` command: one subcommand per lifecycle step.

Each area of the project registers its own subcommands (see `register()` in
cbm/commands/*.py); this module only wires them together and turns
exceptions into one-line messages and exit codes (see extractor/errors.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from cbm import __version__
from extractor.errors import CbmError, UserError, failure

# The modules that contribute subcommands and the top-level commands each adds, in the order of
# `cbm --help`. A command line naming one of these commands imports only its module (the others pull
# openstacksdk, ansible-runner, numba...: a second of start-up for nothing); help imports them all.
COMMAND_MODULES = {
    "cbm.commands.cloud": ("up", "plan", "down"),
    "cbm.commands.sandbox": ("sandbox",),
    "cbm.commands.configure": ("configure",),
    "cbm.commands.status": ("status",),
    "cbm.commands.onboard": ("onboard",),
    "cbm.commands.upgrade": ("upgrade",),
    "cbm.commands.config": ("config",),
    "cbm.commands.db": ("db",),
    "cbm.commands.maintain": ("maintain",),
    "cbm.commands.parcels": ("parcels",),
    "cbm.commands.aoi": ("aoi",),
    "cbm.commands.catalog": ("catalog",),
    "cbm.commands.order": ("order",),
    "cbm.commands.extract": ("extract",),
    "cbm.commands.schedule": ("schedule",),
    "cbm.commands.timeseries": ("timeseries",),
    "cbm.commands.fleet": ("fleet",),
}


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake on one line instead of a usage block."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def command_modules(argv: list[str] | None) -> list[str]:
    """The modules to register for this command line: the one owning its command, else all."""
    pre = Parser(add_help=False)
    add_common_options(pre)
    pre.add_argument("command", nargs="?")
    try:
        known, _rest = pre.parse_known_args(argv)
    except UserError:   # a malformed common option: the full parser says what is wrong
        return list(COMMAND_MODULES)
    owners = [m for m, commands in COMMAND_MODULES.items() if getattr(known, "command", None) in commands]
    return owners or list(COMMAND_MODULES)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `cbm` parser; with `argv`, only the commands that command line needs are registered."""
    parser = Parser(prog="cbm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cbm-onboard {__version__}")
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in (command_modules(argv) if argv is not None else COMMAND_MODULES):
        importlib.import_module(name).register(sub)
    return parser


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every subcommand accepts (before or after the subcommand name)."""
    parser.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                        help="settings file (default: $CBM_CONFIG, ./cbm.yml, ~/.config/cbm/config.yml)")
    parser.add_argument("--deployment", metavar="SPEC", default=argparse.SUPPRESS,
                        help="data commands act on this deployment's database (its deployment.yml; "
                             "default: $CBM_DEPLOYMENT, else the db settings)")
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more detail on stderr (repeat for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="only errors on stderr")


def add_command(subparsers, name: str, func, help: str, **kwargs) -> argparse.ArgumentParser:
    """Add a subcommand that runs `func(args)`; it accepts the common options too."""
    parser = subparsers.add_parser(name, help=help, description=help, **kwargs)
    add_common_options(parser)
    parser.set_defaults(func=func)
    return parser


def add_group(subparsers, name: str, help: str):
    """Add a command group (`cbm db ...`) and return the subparsers of its commands."""
    parser = subparsers.add_parser(name, help=help, description=help)
    group = parser.add_subparsers(dest=f"{name}_command", metavar="COMMAND", parser_class=Parser)
    group.required = True
    return group


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)
        args = parser.parse_args(argv)
        for name, default in (("config", None), ("deployment", None), ("verbose", 0), ("quiet", False)):
            if not hasattr(args, name):
                setattr(args, name, default)
        setup_logging(args.verbose, args.quiet)
        rc = args.func(args)
        return int(rc or 0)
    except (CbmError, KeyboardInterrupt) as exc:
        line, code = failure(exc)
        print(line, file=sys.stderr)
        return code
    except BrokenPipeError:
        # stdout closed early (e.g. `cbm ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
