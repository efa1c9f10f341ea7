"""Per-deployment local state, outside the repository:

    ${XDG_STATE_HOME:-~/.local/state}/cbm/<name>/      (0700)
        id_ed25519, id_ed25519.pub                     the deployment's SSH key (private key 0600)
        known_hosts                                    host keys learnt with StrictHostKeyChecking=accept-new
        ...                                            (others add the DB password, ansible-runner artifacts)

Every file is created 0600 and every folder 0700; the private key is never printed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extractor.errors import CbmError

KEY_FILE = "id_ed25519"


def state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cbm"


def state_dir(name: str, create: bool = True) -> Path:
    """The deployment's state folder (created 0700 when asked)."""
    path = state_root() / name
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)
        except OSError as exc:
            raise CbmError(f"cannot create the state folder {path}: {exc.strerror}") from None
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


def private_key_path(name: str) -> Path:
    return state_dir(name) / KEY_FILE


def known_hosts_path(name: str) -> Path:
    return state_dir(name) / "known_hosts"


def ensure_ssh_key(name: str) -> str:
    """Return the deployment's public key (OpenSSH line), generating the key pair the first time."""
    key = private_key_path(name)
    pub = key.with_name(KEY_FILE + ".pub")
    if key.exists() and pub.exists():
        return pub.read_text().strip()
    private = Ed25519PrivateKey.generate()
    write_private(key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    line = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()
    line = f"{line} cbm-{name}"
    write_private(pub, line + "\n")
    return line


def read_public_key(name: str) -> str | None:
    """The deployment's public key if this machine has it (it proves which keypair is ours)."""
    pub = state_root() / name / (KEY_FILE + ".pub")
    return pub.read_text().strip() if pub.exists() else None


def same_key(a: str | None, b: str | None) -> bool:
    """Compare two OpenSSH public key lines by type and key data (comments differ)."""
    if not a or not b:
        return False
    return a.split()[:2] == b.split()[:2]


def forget_hosts(name: str, addresses) -> None:
    """Drop known_hosts entries of addresses that now belong to new servers (new host keys)."""
    path = state_root() / name / "known_hosts"
    addresses = {a for a in addresses if a}
    if not path.exists() or not addresses:
        return
    kept = [line for line in path.read_text().splitlines()
            if not any(_host_matches(h, addresses) for h in line.split(" ", 1)[0].split(","))]
    write_private(path, "".join(f"{line}\n" for line in kept))


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
