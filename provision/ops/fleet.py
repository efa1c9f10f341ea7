"""One command over several deployments (`cbm fleet status|upgrade|schedule SPEC...`).

Each deployment's command is the real `cbm` in a subprocess (`python -m cbm <command> SPEC ...`), so
what it does, prints and returns is exactly what the single command gives. At most `jobs` run at the
same time; one failing does not stop the others. Its output (stdout and stderr, in order) goes to a
new log in that deployment's state folder (provision/hosts/files.py: logs/<UTC time>-<command>.log).
A spec that does not load (no such file, bad YAML, a bad key) runs nothing: its one-line error is the
outcome. Two specs of the same deployment are refused (they would act on it twice at once).

Each outcome: the deployment, the exit code, the wall time, one line of detail (the command's error
line, the status notes, or its last line) and the log.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from extractor.errors import CbmError, UserError, one_line
from provision.cloud import spec as specs
from provision.hosts.files import DeploymentFiles

COMMANDS = ("status", "upgrade", "schedule")
DEFAULT_JOBS = 3
TAIL_BYTES = 65536          # the end of a log read for the detail line
DETAIL_CHARS = 300
BOX = set("─│┌┐└┘├┤┬┴┼━┃┏┓┗┛╭╮╯╰═║╔╗╚╝")   # rich table borders: not a detail line
ERROR_PREFIX = "cbm: error: "
NOT_RUN = -1                # the exit code of an outcome whose command never ran


@dataclass
class Target:
    """A deployment to run on: the spec as given, its name and log (None when the spec does not load)."""
    spec: str
    name: str | None
    log: Path | None = None
    error: str | None = None


@dataclass
class Outcome:
    spec: str
    name: str | None
    rc: int
    seconds: float
    detail: str
    log: Path | None

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def label(self) -> str:
        return self.name or self.spec


def expand(patterns: list[str]) -> list[str]:
    """The specs: each argument as given, or the files a glob pattern the shell left unexpanded
    (quoted) matches; a pattern without matches stays (it fails as a missing spec). Duplicates once."""
    out: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else []
        for path in matches or [pattern]:
            if path not in out:
                out.append(path)
    return out


def targets(spec_paths: list[str], command: str) -> list[Target]:
    """Load each spec for its name and open its log; a spec that does not load is kept with its error."""
    out, seen = [], {}
    for path in spec_paths:
        try:
            name = specs.load(path).name
        except UserError as exc:
            out.append(Target(path, None, error=str(exc)))
            continue
        if name in seen:
            raise UserError(f"{seen[name]} and {path} are both deployment {name}; give each deployment once")
        seen[name] = path
        out.append(Target(path, name))
    for t in out:
        if t.name:
            try:
                t.log = DeploymentFiles(t.name).new_log(command)
            except CbmError as exc:   # its state folder cannot be written: that deployment fails
                t.error = str(exc)
    return out


def cbm_argv(command: str, spec: str, extra: list[str], config: str | None = None) -> list[str]:
    """The single command for one deployment, run by this interpreter."""
    return [sys.executable, "-m", "cbm", command, spec, *extra, *(["--config", config] if config else [])]


def _tail_lines(path: Path) -> list[str]:
    with open(path, "rb") as f:
        f.seek(max(f.seek(0, os.SEEK_END) - TAIL_BYTES, 0))
        return f.read().decode(errors="replace").splitlines()


def detail_line(command: str, rc: int, lines: list[str]) -> str:
    """One line for the summary: the error line of a failed command (cbm's `cbm: error: ...`), else the
    status notes, else the last line of its output that is not part of a table."""
    errors = [ln for ln in lines if ln.startswith(ERROR_PREFIX) or ln.startswith("cbm: interrupted")]
    if rc != 0 and errors:
        return one_line(errors[-1].removeprefix(ERROR_PREFIX), DETAIL_CHARS)
    notes = [ln.strip() for ln in lines if ln.startswith("note:")]
    if command == "status" and notes:
        more = f" (+{len(notes) - 1} more notes)" if len(notes) > 1 else ""
        return one_line(notes[0].removeprefix("note:").strip(), DETAIL_CHARS - len(more)) + more
    if command == "status" and rc == 0:
        return "every part answered"
    text = [ln for ln in lines if ln.strip() and not BOX & set(ln)]
    return one_line(text[-1], DETAIL_CHARS) if text else (f"exit {rc}" if rc else "done")


def run_one(target: Target, command: str, argv: list[str], env: dict | None = None) -> Outcome:
    """Run one deployment's command, its stdout and stderr into its log; never raises for its failure."""
    if target.error is not None:
        return Outcome(target.spec, target.name, NOT_RUN, 0.0, target.error, None)
    began = time.monotonic()
    child_env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}  # the log keeps the order
    with open(target.log, "ab", buffering=0) as log:
        try:
            rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=child_env).returncode
        except OSError as exc:
            return Outcome(target.spec, target.name, NOT_RUN, time.monotonic() - began,
                           f"cannot run {argv[0]}: {exc.strerror}", target.log)
    detail = detail_line(command, rc, _tail_lines(target.log))
    return Outcome(target.spec, target.name, rc, time.monotonic() - began, detail, target.log)


def run(spec_paths: list[str], command: str, extra: list[str] | None = None, jobs: int = DEFAULT_JOBS,
        config: str | None = None, argv_of=None, on_start=None, on_done=None, env: dict | None = None
        ) -> list[Outcome]:
    """Run `command` on every deployment, at most `jobs` at once; the outcomes in the order given.

    argv_of(target) -> argv overrides the command line (tests); on_start(target) and on_done(outcome)
    are called as each starts and ends (from worker threads, one at a time)."""
    if command not in COMMANDS:
        raise UserError(f"fleet: unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: give at least 1")
    if not spec_paths:
        raise UserError("fleet: give at least one deployment spec (e.g. inventories/*/deployment.yml)")
    extra = list(extra or [])
    argv_of = argv_of or (lambda t: cbm_argv(command, t.spec, extra, config))
    lock = threading.Lock()

    def job(target: Target) -> Outcome:
        if on_start and target.error is None:
            with lock:
                on_start(target)
        try:
            outcome = run_one(target, command, argv_of(target), env)
        except OSError as exc:   # the log could not be written: that deployment fails, not the fleet
            outcome = Outcome(target.spec, target.name, NOT_RUN, 0.0, f"log {target.log}: {exc.strerror}", target.log)
        if on_done:
            with lock:
                on_done(outcome)
        return outcome

    found = targets(expand(spec_paths), command)
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="fleet") as pool:
        return list(pool.map(job, found))


def exit_code(outcomes: list[Outcome]) -> int:
    """0 only when every deployment's command succeeded."""
    return 0 if outcomes and all(o.ok for o in outcomes) else 1

