"""The one owner of a deployment's local files, outside the repository:

    ${XDG_STATE_HOME:-~/.local/state}/cbm/<name>/      (0700)
        id_ed25519, id_ed25519.pub      the deployment's SSH key (private key 0600)
        known_hosts                     host keys learnt with StrictHostKeyChecking=accept-new
        db_password                     the postgres password, generated once by `cbm configure` (0600)
        db_worker_password              the password of the workers' role (cbm_worker), idem
        pgpass                          libpq password file for pg_dump/pg_restore/psql (0600)
        onboarding.yml                  the choices of `cbm onboard` (defaults of `cbm extract swarm`)
        s3-credentials.yml              the settings' S3 keys, handed to the workers (`cbm extract swarm`)
        runs/<UTC time>/                one ansible-runner private data dir per playbook run (last 20 kept)
        logs/<UTC time>-<command>.log   the output of a command `cbm fleet` ran on it (last 50 kept)
        backups/<UTC time>.dump         `cbm db backup` (and `cbm upgrade`) dumps
        images/                         the extractor image archive handed to the hosts
    ${XDG_STATE_HOME:-~/.local/state}/cbm/backups/   dumps of the database of the settings (no deployment)

Every file is created 0600 and every folder 0700; the private key and the password are never printed.
Reading a path never creates anything; the `ensure_*` and `new_*` methods do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extractor.errors import CbmError

KEY_FILE = "id_ed25519"
KEEP_RUNS = 20   # ansible-runner run folders kept per deployment
KEEP_LOGS = 50   # command logs (`cbm fleet`) kept per deployment


def state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cbm"


def make_private_dir(path: Path) -> Path:
    """Create a folder (and its parents) readable only by its owner."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise CbmError(f"cannot create the folder {path}: {exc.strerror}") from None
    return path


def write_private(path: Path, data: bytes | str) -> None:
    """Write a file readable only by its owner, atomically (no moment where it is wider open)."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def settings_backups() -> Path:
    """Where backups of the database of the settings (no deployment) go."""
    return state_root() / "backups"


class DeploymentFiles:
    """The local files of deployment `name` (see the module docstring for the layout)."""

    def __init__(self, name: str):
        self.name = name
        self.root = state_root() / name
        # paths only: nothing is created until an ensure_*/new_* method or folder() runs
        self.private_key = self.root / KEY_FILE
        self.public_key = self.root / (KEY_FILE + ".pub")
        self.known_hosts = self.root / "known_hosts"
        self.password = self.root / "db_password"
        self.worker_password = self.root / "db_worker_password"  # the extraction workers' database role
        self.pgpass = self.root / "pgpass"
        self.s3_credentials = self.root / "s3-credentials.yml"  # the settings' S3 keys, for the workers
        self.onboarding = self.root / "onboarding.yml"
        self.backups = self.root / "backups"
        self.images = self.root / "images"
        self.logs = self.root / "logs"

    def folder(self) -> Path:
        """The state folder, created 0700 if missing."""
        return make_private_dir(self.root)

    # -- the SSH key -----------------------------------------------------------------------
    def read_public_key(self) -> str | None:
        """The deployment's public key if this machine has it (it proves which keypair is ours)."""
        return self.public_key.read_text().strip() if self.public_key.exists() else None

    def ensure_ssh_key(self) -> str:
        """The deployment's public key (OpenSSH line), generating the key pair the first time."""
        if self.private_key.exists() and self.public_key.exists():
            return self.public_key.read_text().strip()
        self.folder()
        private = Ed25519PrivateKey.generate()
        write_private(self.private_key, private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        line = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH).decode()
        line = f"{line} cbm-{self.name}"
        write_private(self.public_key, line + "\n")
        return line

    # -- the database password -------------------------------------------------------------
    def ensure_password(self) -> Path:
        """The postgres password file, generated once (0600); the postgis role reads it."""
        self.folder()
        if not self.password.exists():
            write_private(self.password, secrets.token_urlsafe(24))
        return self.password

    def ensure_worker_password(self) -> Path:
        """The workers' role password file, generated once (0600); `cbm db init` (roles/schema) sets it
        on the role, `cbm extract swarm` hands it to the workers as a swarm secret."""
        self.folder()
        if not self.worker_password.exists():
            write_private(self.worker_password, secrets.token_urlsafe(24))
        return self.worker_password

    # -- known hosts -----------------------------------------------------------------------
    def ensure_known_hosts(self) -> Path:
        """The known_hosts file (empty at first: host keys are accepted on first contact, then pinned)."""
        self.folder()
        if not self.known_hosts.exists():
            write_private(self.known_hosts, "")
        return self.known_hosts

    def forget_hosts(self, addresses) -> None:
        """Drop known_hosts entries of addresses that now belong to new servers (new host keys)."""
        addresses = {a for a in addresses if a}
        if not self.known_hosts.exists() or not addresses:
            return
        kept = [line for line in self.known_hosts.read_text().splitlines()
                if not any(_host_matches(h, addresses) for h in line.split(" ", 1)[0].split(","))]
        write_private(self.known_hosts, "".join(f"{line}\n" for line in kept))

    def forget_all_hosts(self) -> None:
        """The deployment's servers are gone: none of their host keys is valid any more."""
        self.known_hosts.unlink(missing_ok=True)

    # -- runs ------------------------------------------------------------------------------
    def new_run_dir(self, keep: int = KEEP_RUNS) -> Path:
        """A new ansible-runner private data dir: runs/<UTC timestamp>[-n]/ (0700). The oldest run
        folders beyond the last `keep` are removed (they hold event logs of past playbook runs)."""
        runs = make_private_dir(self.root / "runs")
        past = sorted((p for p in runs.iterdir() if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))
        for old in past[:max(len(past) - (keep - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path, n = runs / stamp, 1
        while path.exists():
            n += 1
            path = runs / f"{stamp}-{n}"
        path.mkdir(mode=0o700)
        return path

    # -- command logs ----------------------------------------------------------------------
    def new_log(self, command: str, keep: int = KEEP_LOGS) -> Path:
        """A new empty log file logs/<UTC timestamp>[-n]-<command>.log (0600) for the output of a command
        run on the deployment; the oldest logs beyond the last `keep` are removed."""
        logs = make_private_dir(self.logs)
        past = sorted(logs.glob("*.log"), key=lambda p: (p.stat().st_mtime, p.name))
        for old in past[:max(len(past) - (keep - 1), 0)]:
            old.unlink(missing_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        for n in range(1, 1000):
            path = logs / f"{stamp}{'' if n == 1 else f'-{n}'}-{command}.log"
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                return path
            except FileExistsError:
                continue
        raise CbmError(f"cannot create a new log in {logs}: too many logs of the same second")


def _host_matches(field: str, addresses: set[str]) -> bool:
    """A known_hosts host field: plain ('10.0.0.5', '[10.0.0.5]:2222') or hashed ('|1|salt|hmac',
    what Debian's default HashKnownHosts writes)."""
    if field.startswith("|1|"):
        try:
            _, _, salt, digest = field.split("|")
            salt_bytes = base64.b64decode(salt)
        except (ValueError, binascii.Error):
            return False
        return any(base64.b64encode(hmac.new(salt_bytes, a.encode(), hashlib.sha1).digest()).decode() == digest
                   for a in addresses)
    bare = field[1:].split("]:")[0] if field.startswith("[") else field
    return bare in addresses
