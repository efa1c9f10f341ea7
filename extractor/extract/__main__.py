"""The worker's entry point, what the extractor image runs:

    python -m extractor.extract run --card CARD [--res RES] [--once] [--aoi NAME] [--parcels TABLE]
                                    [--start YYYY-MM-DD] [--end YYYY-MM-DD] [--config FILE] [-v] [-q]

The options and behaviour of `cbm extract run` (extractor/extract/options.py), without the rest of
the `cbm` command: the settings come from the settings file and the CBM_* and PG* variables (a
worker has no --deployment). A failure is one line on stderr with the exit code of
extractor/errors.py; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import logging
import sys

from extractor import settings
from extractor.errors import CbmError, UserError, failure
from extractor.extract import options

PROG = "python -m extractor.extract"


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake on one line (a UserError, exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="the extraction worker")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    run = sub.add_parser("run", help=options.RUN_HELP, description=options.RUN_HELP)
    options.add_run_options(run)
    run.add_argument("--config", metavar="FILE", help="settings file (default: $CBM_CONFIG, ./cbm.yml, "
                                                      "~/.config/cbm/config.yml)")
    run.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (repeat for debug)")
    run.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        return options.run(args, lambda a: settings.load(a.config), out=lambda line: print(line, flush=True))
    except (CbmError, KeyboardInterrupt) as exc:
        line, code = failure(exc)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
