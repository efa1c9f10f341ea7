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
from extractor.errors import CbmError, UserError

# Modules that contribute subcommands, in the order they appear in `cbm --help`.
COMMAND_MODULES = ("cbm.commands.cloud", "cbm.commands.sandbox", "cbm.commands.configure", "cbm.commands.status",
                   "cbm.commands.onboard", "cbm.commands.upgrade", "cbm.commands.config", "cbm.commands.db", "cbm.commands.parcels", "cbm.commands.aoi",
                   "cbm.commands.catalog", "cbm.commands.extract")


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake on one line instead of a usage block."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="cbm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cbm-onboard {__version__}")
    add_common_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name in COMMAND_MODULES:
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
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        for name, default in (("config", None), ("deployment", None), ("verbose", 0), ("quiet", False)):
            if not hasattr(args, name):
                setattr(args, name, default)
        setup_logging(args.verbose, args.quiet)
        rc = args.func(args)
        return int(rc or 0)
    except CbmError as exc:
        print(f"cbm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cbm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. `cbm ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
