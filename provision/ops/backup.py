"""The whole database to a file on the operator's machine, and back (`cbm db backup`, `cbm db restore`).

    cbm db backup [SPEC] [--out FILE]      pg_dump custom format (-Fc), file 0600
        default FILE: <state folder of SPEC>/backups/<UTC timestamp>.dump, or without SPEC (the
        database of the normal settings) ${XDG_STATE_HOME:-~/.local/state}/cbm/backups/<UTC timestamp>.dump
    cbm db restore FILE [SPEC] [--yes]     pg_restore --clean --if-exists, in one transaction: a restore that
        fails part-way changes nothing. Asks first (or --yes). A file that is not a pg_dump archive is refused.

The database of a deployment is private: pg_dump/pg_restore reach it through the SSH tunnel to the
manager (provision.ops.deployment.tunnel), as the owner role. The password reaches them only through a
0600 pgpass file (PGPASSFILE), never argv or PGPASSWORD (provision.ops.deployment.libpq_env). pg_dump/pg_restore come from postgresql-client-15
(scripts/bootstrap.sh); the newest installed version is used (it reads older servers and archives).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from extractor import db
from extractor import settings as settings_mod
from extractor.errors import CbmError, UserError, one_line
from provision.hosts.files import DeploymentFiles, make_private_dir, settings_backups
from provision.ops import deployment

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


def summary(path: Path, facts: dict) -> str:
    """The line that reports a backup."""
    return (f"backup: {path} ({human_size(facts['size'])}, database {facts['database']} of "
            f"{human_size(facts['db_size'])} at {facts['where']}, {facts['seconds']:.1f} s)")


# -- target: the deployment of SPEC or the normal settings ----------------------------------
@contextlib.contextmanager
def target(spec: str | None, config: str | None):
    """(settings, env for libpq tools, default backup folder) of a deployment (SPEC) or of the settings."""
    if spec:
        settings = deployment.deployment_settings(spec, config)
        files = DeploymentFiles(settings.deployment)
        files.folder()
        env = deployment.libpq_env(settings, files.pgpass)
        yield settings, env, files.backups
    else:
        settings = settings_mod.load(config)
        with deployment.libpq_environment(settings) as env:
            yield settings, env, settings_backups()


def database_facts(settings) -> tuple[str, int]:
    """(database name, size in bytes); a one-line CbmError when the database cannot be reached."""
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
        return one_line(text)[:400]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# -- backup ---------------------------------------------------------------------------------
def default_name() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".dump"


def dump_command(out: Path) -> list[str]:
    """pg_dump's argv: the connection comes from PG* variables and PGPASSFILE, never from argv."""
    return [pg_tool("pg_dump"), "--format=custom", "--no-password", "--verbose", f"--file={out}"]


@contextlib.contextmanager
def no_progress(description: str, total: int | None = None):
    """The default progress display: none. Callers pass a context manager factory of the same shape
    (cbm.terminal.live) that yields `update(completed=, info=)`."""
    yield lambda **fields: None


def backup(settings, env: dict, out: Path, progress=no_progress) -> dict:
    """Dump the database into `out` (0600); returns facts for the report."""
    where = deployment.describe(settings)
    name, db_size = database_facts(settings)
    partial = out.with_name(f".{out.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600 before pg_dump writes
    os.close(fd)
    start = time.monotonic()
    run = ToolRun(dump_command(partial), env)
    try:
        with progress(f"pg_dump {name}") as update:
            rc = run.wait(lambda: update(info=f"{partial.stat().st_size / 2**20:.1f} MiB" if partial.exists() else ""))
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


def run_backup(spec: str | None = None, out: str | Path | None = None, config: str | None = None,
               progress=no_progress) -> tuple[Path, dict]:
    """Back up a deployment's database (spec) or the settings' one (`cbm db backup`, `cbm upgrade`)."""
    with target(spec, config) as (settings, env, folder):
        if out:
            out = Path(out).expanduser()
            if out.exists():
                raise UserError(f"--out {out} already exists; choose another file or remove it")
            if not out.parent.is_dir():
                raise UserError(f"--out {out}: folder {out.parent} does not exist; create it first")
        else:
            out = make_private_dir(folder) / default_name()
        facts = backup(settings, env, out, progress)
    return out, facts


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
        reason = one_line(proc.stderr.replace("pg_restore: error:", ""))[:300]
        raise UserError(f"{path} is a damaged pg_dump archive ({reason}); use another backup")
    return [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith(";")]


def restore_command(path: Path, database: str) -> list[str]:
    """pg_restore's argv: the connection comes from PG* variables and PGPASSFILE, never from argv."""
    quoted = "'" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return [pg_tool("pg_restore"), *RESTORE_FLAGS, "--no-password", "--verbose", f"--dbname=dbname={quoted}",
            str(path)]


def restore(settings, env: dict, path: Path, toc: list[str], database: str, progress=no_progress) -> float:
    """pg_restore the archive into `database`, in one transaction; seconds taken."""
    start = time.monotonic()
    run = ToolRun(restore_command(path, database), env)
    try:
        with progress(f"pg_restore into {database}", total=len(toc)) as update:
            rc = run.wait(lambda: update(completed=min(run.items, len(toc)), info=run.current))
    except BaseException:
        run.stop()
        raise
    if rc != 0:
        raise CbmError(f"restore of {path} into {deployment.describe(settings)} failed and was rolled back (nothing changed): "
                       f"pg_restore: {run.error()}")
    return time.monotonic() - start


def restore_file(path: str | Path, spec: str | None, config: str | None, confirm, progress=no_progress) -> dict:
    """Restore a `cbm db backup` archive into a deployment's database (spec) or the settings' one.

    `confirm(question) -> bool` is asked first (the caller passes `lambda q: True` for --yes); a "no"
    is a UserError and nothing changes."""
    path = Path(path).expanduser()
    toc = check_archive(path)
    with target(spec, config) as (settings, env, _folder):
        name, _size = database_facts(settings)
        where = deployment.describe(settings)
        if not confirm(f"Restore {path} ({len(toc)} objects) into {where}, replacing the objects it contains?"):
            raise UserError("db restore: cancelled, nothing was changed")
        # The database name comes from the connection we just made (it may be libpq's default).
        seconds = restore(settings, env, path, toc, name, progress)
    return {"path": path, "size": path.stat().st_size, "objects": len(toc), "where": where, "seconds": seconds}
