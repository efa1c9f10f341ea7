"""The continuous mode's job, what the swarm service of `cbm schedule` runs in the extractor image:

    python -m extractor.schedule loop --log-dir DIR   forever: wait until a run is due or asked for, run it
    python -m extractor.schedule run --log-dir DIR    one run now; exit 0 when it ended ok, 1 otherwise

The settings come from the CBM_* and PG* variables (as the worker's). The loop listens on the
schedule's NOTIFY channel, so that a requested run (`cbm schedule SPEC --run-now`) starts at once,
and looks at the schedule at least every minute. A database that does not answer is waited for.
SIGTERM (the service is removed or updated) ends it; a run in progress is recorded as interrupted.
"""

from __future__ import annotations

import argparse
import logging
import select
import signal
import sys
import time

import psycopg2
from psycopg2 import sql

from extractor import db, settings
from extractor.errors import CbmError, UserError, failure, one_line
from extractor.schedule import CHANNEL, job, take_due

PROG = "python -m extractor.schedule"
LOOK_EVERY = 60.0     # seconds: the longest sleep between two looks at the schedule
RETRY_AFTER = 30.0    # seconds before trying again when the database does not answer


def _stop(signum, frame):  # noqa: ARG001 - signal handler
    raise KeyboardInterrupt


def _listen(s):
    conn = db.connect(s)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
    return conn


def loop(s, log_dir: str, out=print) -> None:
    conn = None
    out(f"schedule job: waiting for runs (log folder {log_dir})")
    while True:
        try:
            conn = conn or _listen(s)
            trigger, wait = take_due(conn, s)
            if trigger:
                row = job.run(s, trigger, log_dir, out)
                out(f"run {row['id']}: {row['outcome']} (log {row['log']})")
                continue
            if select.select([conn], [], [], min(LOOK_EVERY, max(wait or LOOK_EVERY, 0.0))) != ([], [], []):
                conn.poll()
                conn.notifies.clear()
        except (CbmError, psycopg2.Error) as exc:
            out(f"schedule job: {one_line(exc, 300)}; trying again in {RETRY_AFTER:.0f} s")
            if conn is not None:
                try:
                    conn.close()
                except psycopg2.Error:
                    pass
            conn = None
            time.sleep(RETRY_AFTER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="the continuous mode's job")
    parser.add_argument("command", choices=("loop", "run"))
    parser.add_argument("--log-dir", required=True, help="folder of the runs' logs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    signal.signal(signal.SIGTERM, _stop)
    say = lambda line: print(line, flush=True)  # noqa: E731
    try:
        s = settings.load(None)
        if args.command == "loop":
            loop(s, args.log_dir, say)
            return 0
        return 0 if job.run(s, "request", args.log_dir, say)["outcome"] == "ok" else 1
    except (CbmError, UserError, KeyboardInterrupt) as exc:
        line, code = failure(exc)
        print(line, file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
