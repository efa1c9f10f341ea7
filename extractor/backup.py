"""`cbm db backup` and `cbm db restore`: the whole database to a file on the operator's machine, and back.

    cbm db backup [SPEC] [--out FILE]      pg_dump custom format (-Fc), file 0600
        default FILE: <state folder of SPEC>/backups/<UTC timestamp>.dump, or without SPEC (the
        database of the normal settings) ${XDG_STATE_HOME:-~/.local/state}/cbm/backups/<UTC timestamp>.dump
    cbm db restore FILE [SPEC] [--yes]     pg_restore --clean --if-exists, in one transaction: a restore that
        fails part-way changes nothing. Asks first (or --yes). A file that is not a pg_dump archive is refused.

The password reaches pg_dump/pg_restore only through a 0600 pgpass file (PGPASSFILE), never argv or
PGPASSWORD (provision.deployment.libpq_env). pg_dump/pg_restore come from postgresql-client-15
(scripts/bootstrap.sh); the newest installed version is used (it reads older servers and archives).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from rich.console import Console

from extractor.errors import CbmError, UserError
from extractor import settings as settings_mod

console = Console(stderr=True, highlight=False)

ARCHIVE_MAGIC = b"PGDMP"  # first bytes of every pg_dump custom/tar-less archive
RESTORE_FLAGS = ("--clean", "--if-exists", "--no-owner", "--single-transaction", "--exit-on-error")


def pg_tool(name: str) -> str:
    """Path of pg_dump / pg_restore: the newest /usr/lib/postgresql/<v>/bin, else PATH."""
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0, reverse=True):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise UserError(f"{name} not found; install postgresql-client-15 (scripts/bootstrap.sh)")
    return found


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# -- target: the deployment of SPEC or the normal settings ----------------------------------
@contextlib.contextmanager
def target(spec: str | None, config: str | None):
    """(settings, env for libpq tools, default backup folder) of a deployment (SPEC) or of the settings."""
    from provision import deployment, state

    if spec:
        settings = deployment.deployment_settings(spec, config)
        folder = state.state_dir(settings.deployment)
        env = deployment.libpq_env(settings, folder / deployment.PGPASS_FILE)
        yield settings, env, folder / "backups"
    else:
        settings = settings_mod.load(config)
        with deployment.libpq_environment(settings) as env:
            yield settings, env, state.state_root() / "backups"


def database_facts(settings) -> tuple[str, int]:
    """(database name, size in bytes); a one-line CbmError when the database cannot be reached."""
    from extractor import db

    conn = db.connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database(), pg_database_size(current_database())")
            name, size = cur.fetchone()
    finally:
        conn.close()
    return name, size


# -- running a libpq tool with progress -----------------------------------------------------
class ToolRun:
    """A pg_dump/pg_restore child: stderr read line by line (progress, last lines for errors)."""

    # pg_restore --verbose: one of these lines per archive item restored (drops are not counted)
    ITEM_PREFIXES = ("creating ", "processing data", "executing ")

    def __init__(self, argv: list[str], env: dict):
        self.argv = argv
        self.items = 0
        self.current = ""
        self.last = deque(maxlen=20)
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, errors="replace")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            line = line.rstrip()
            self.last.append(line)
            text = line.split(": ", 1)[-1]
            if text.startswith(self.ITEM_PREFIXES):
                self.items += 1
                self.current = text[:60]

    def wait(self, tick=None) -> int:
        while self.proc.poll() is None:
            if tick:
                tick()
            time.sleep(0.2)
        self.reader.join()
        return self.proc.returncode

    def error(self) -> str:
        """The tool's own reason for failing (its 'error:' lines), on one line."""
        errors = [ln.split("error:", 1)[1].strip() for ln in self.last if "error:" in ln]
        text = "; ".join(dict.fromkeys(errors)) or (self.last[-1] if self.last else f"exit {self.proc.returncode}")
        return " ".join(text.split())[:400]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@contextlib.contextmanager
def live(description: str, total: int | None = None):
    """A rich progress line on a terminal; nothing elsewhere (the final line says what happened)."""
    if not console.is_terminal:
        yield lambda **kw: None
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total:
        columns += [BarColumn(), TextColumn("{task.completed}/{task.total}")]
    columns += [TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total, info="")
        yield lambda **kw: progress.update(task, **kw)


# -- backup ---------------------------------------------------------------------------------
def default_name() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".dump"


def dump_command(out: Path) -> list[str]:
    """pg_dump's argv: the connection comes from PG* variables and PGPASSFILE, never from argv."""
    return [pg_tool("pg_dump"), "--format=custom", "--no-password", "--verbose", f"--file={out}"]


def backup(settings, env: dict, out: Path) -> dict:
    """Dump the database into `out` (0600); returns facts for the report."""
    from extractor import db

    where = db.describe(settings)
    name, db_size = database_facts(settings)
    partial = out.with_name(f".{out.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 before pg_dump writes
    os.close(fd)
    start = time.monotonic()
    run = ToolRun(dump_command(partial), env)
    try:
        with live(f"pg_dump {name}") as update:
            rc = run.wait(lambda: update(info=human_size(partial.stat().st_size) if partial.exists() else ""))
    except BaseException:
        run.stop()
        partial.unlink(missing_ok=True)
        raise
    if rc != 0:
        partial.unlink(missing_ok=True)
        raise CbmError(f"backup of {where} failed, no file written: pg_dump: {run.error()}")
    os.chmod(partial, 0o600)
    os.replace(partial, out)
    return {"database": name, "where": where, "db_size": db_size, "size": out.stat().st_size,
            "seconds": time.monotonic() - start}


def run_backup(spec: str | None = None, out: str | Path | None = None, config: str | None = None) -> tuple[Path, dict]:
    """Back up a deployment's database (spec) or the settings' one; for other commands (upgrade, down)."""
    with target(spec, config) as (settings, env, folder):
        if out:
            out = Path(out).expanduser()
            if out.exists():
                raise UserError(f"--out {out} already exists; choose another file or remove it")
            if not out.parent.is_dir():
                raise UserError(f"--out {out}: folder {out.parent} does not exist; create it first")
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise CbmError(f"cannot create the backup folder {folder}: {exc.strerror}") from None
            out = folder / default_name()
        facts = backup(settings, env, out)
    return out, facts


def cmd_backup(args) -> int:
    from provision.deployment import spec_of

    out, facts = run_backup(spec_of(args), args.out, getattr(args, "config", None))
    print(f"backup: {out} ({human_size(facts['size'])}, database {facts['database']} of "
          f"{human_size(facts['db_size'])} at {facts['where']}, {facts['seconds']:.1f} s)")
    return 0


# -- restore --------------------------------------------------------------------------------
def check_archive(path: Path) -> list[str]:
    """The archive's table of contents; one-line UserError if the file is not a readable pg_dump archive."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(ARCHIVE_MAGIC))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; pass a file written by cbm db backup") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder; pass a file written by cbm db backup") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    if head != ARCHIVE_MAGIC:
        raise UserError(f"{path} is not a pg_dump archive (custom format); pass a file written by cbm db backup")
    proc = subprocess.run([pg_tool("pg_restore"), "--list", str(path)], capture_output=True, text=True,
                          errors="replace", stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        reason = " ".join(proc.stderr.replace("pg_restore: error:", "").split())[:300]
        raise UserError(f"{path} is a damaged pg_dump archive ({reason}); use another backup")
    return [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith(";")]


def restore_command(path: Path, database: str) -> list[str]:
    """pg_restore's argv: the connection comes from PG* variables and PGPASSFILE, never from argv."""
    quoted = "'" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return [pg_tool("pg_restore"), *RESTORE_FLAGS, "--no-password", "--verbose", f"--dbname=dbname={quoted}",
            str(path)]


def confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UserError("db restore: refusing to overwrite without confirmation: run it on a terminal or pass --yes")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def restore(settings, env: dict, path: Path, toc: list[str], database: str) -> float:
    from extractor import db

    start = time.monotonic()
    run = ToolRun(restore_command(path, database), env)
    try:
        with live(f"pg_restore into {database}", total=len(toc)) as update:
            rc = run.wait(lambda: update(completed=min(run.items, len(toc)), info=run.current))
    except BaseException:
        run.stop()
        raise
    if rc != 0:
        raise CbmError(f"restore of {path} into {db.describe(settings)} failed and was rolled back (nothing changed): "
                       f"pg_restore: {run.error()}")
    return time.monotonic() - start


def cmd_restore(args) -> int:
    from extractor import db

    path = Path(args.file).expanduser()
    toc = check_archive(path)
    from provision.deployment import spec_of

    with target(spec_of(args), getattr(args, "config", None)) as (settings, env, _folder):
        name, _size = database_facts(settings)
        where = db.describe(settings)
        if not args.yes and not confirm(
                f"Restore {path} ({len(toc)} objects) into {where}, replacing the objects it contains?"):
            raise UserError("db restore: cancelled, nothing was changed")
        # The database name comes from the connection we just made (it may be libpq's default).
        seconds = restore(settings, env, path, toc, name)
    print(f"restore: {path} ({human_size(path.stat().st_size)}, {len(toc)} objects) into {where} "
          f"in {seconds:.1f} s")
    return 0


def register(group) -> None:
    """Add `backup` and `restore` to the `cbm db` group."""
    from cbm.cli import add_command

    p = add_command(group, "backup", cmd_backup, "dump the database to a file on this machine (pg_dump -Fc)")
    p.add_argument("spec", metavar="SPEC", nargs="?",
                   help="deployment spec (default: --deployment, $CBM_DEPLOYMENT, else the database of the settings)")
    p.add_argument("--out", metavar="FILE",
                   help="the dump file (default: <state folder>/backups/<UTC time>.dump)")
    p = add_command(group, "restore", cmd_restore,
                    "restore a dump of cbm db backup into the database (replaces the objects it contains)")
    p.add_argument("file", metavar="FILE", help="a dump written by cbm db backup")
    p.add_argument("spec", metavar="SPEC", nargs="?",
                   help="deployment spec (default: --deployment, $CBM_DEPLOYMENT, else the database of the settings)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
