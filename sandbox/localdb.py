"""A throwaway PostGIS server on loopback, for the tests and the local demo.

`initdb` into a folder, a free port on 127.0.0.1, password auth (scram-sha-256) for every TCP
connection, `trust` only on its private Unix socket. The password is generated and written to
a 0600 file next to the data; clients get it through PGPASSFILE, never in argv.
PostgreSQL refuses to run as root: when we are root the server runs as the `postgres` user.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from extractor.errors import CbmError, UserError


def pg_bindir() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise UserError("PostgreSQL server binaries not found; run scripts/bootstrap.sh (installs postgresql-15-postgis-3)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgis:
    """`with LocalPostgis() as pg:` starts a server; `pg.env()` has the PG* variables to reach it."""

    # Throwaway data: no durability. A subclass that measures a deployment's server sets "" (bench/db.py).
    server_options = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"

    def __init__(self, root: str | Path | None = None, port: int | None = None, user: str = "postgres"):
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="cbm-pg-"))
        self.port = port or free_port()
        self.user = user
        self.data = self.root / "data"
        self.passfile = self.root / "pgpass"
        self.bindir = pg_bindir()
        self._run_as = None
        if os.geteuid() == 0:
            self._run_as = pwd.getpwnam("postgres")

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "LocalPostgis":
        self.root.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            os.chown(self.root, self._run_as.pw_uid, self._run_as.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._write_passfile()
        log = self.root / "server.log"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60", "-o",
                 f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
                 f" {self.server_options}", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalPostgis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------------
    def env(self, dbname: str = "postgres") -> dict[str, str]:
        """PG* variables for a client: TCP on loopback, password from the 0600 passfile."""
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": self.user,
                "PGDATABASE": dbname, "PGPASSFILE": str(self.passfile)}

    @property
    def password(self) -> str:
        return (self.root / "pwfile").read_text().strip()

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        env = {**os.environ, **self.env(dbname)}
        out = subprocess.run([str(self.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise CbmError(f"psql failed: {out.stderr.strip()}")
        return out.stdout

    # -- internals -------------------------------------------------------------------------
    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(secrets.token_urlsafe(24) + "\n")
        os.chmod(pwfile, 0o600)
        if self._run_as:
            os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
        self._pg("initdb", "-D", str(self.data), "-U", self.user, "--pwfile", str(pwfile),
                 "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--no-instructions")

    def _write_passfile(self) -> None:
        line = f"127.0.0.1:{self.port}:*:{self.user}:{self.password}\n"
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(line)
        os.chmod(self.passfile, 0o600)

    def _pg(self, tool: str, *args: str, check: bool = True) -> None:
        cmd = [str(self.bindir / tool), *args]
        kwargs: dict = {"capture_output": True, "text": True, "cwd": str(self.root)}
        if self._run_as:
            uid, gid = self._run_as.pw_uid, self._run_as.pw_gid

            def demote():
                os.setgid(gid)
                os.setuid(uid)

            kwargs["preexec_fn"] = demote
            kwargs["env"] = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.root), "LC_ALL": "C.UTF-8"}
        proc = subprocess.run(cmd, **kwargs)
        if check and proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise CbmError(f"{tool} failed: {proc.stderr.strip() or proc.stdout.strip()} {tail}".strip())


# sigs and hists as the seed's SQL makes them (a seed-made database, for the upgrade tests and bench db)
SEED_SIGS_HISTS = """
CREATE TABLE sigs (pid integer, obsid integer, band character(3), count real, mean real, std real,
                   min real, max real, p25 real, p50 real, p75 real);
CREATE INDEX sigs_bidx ON sigs USING btree (band);
CREATE INDEX sigs_obsidx ON sigs USING btree (obsid);
CREATE INDEX sigs_pid ON sigs USING btree (pid);
CREATE TABLE hists (pid integer, obsid integer, hist json);
CREATE INDEX hist_obsidx ON hists USING btree (obsid);
CREATE INDEX hist_pidx ON hists USING btree (pid);
"""
