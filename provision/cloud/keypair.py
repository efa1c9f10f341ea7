"""The deployment's keypair: created from its local public key; one with its name but another key is
not ours and stops `up` (nova keypairs carry no tags)."""

from __future__ import annotations

from extractor.errors import CbmError
from provision.cloud.common import Run
from provision.cloud.connection import api
from provision.cloud.progress import step


def reconcile(run: Run, found, key) -> None:
    """`key`: read() -> the local public key or None, ensure() -> the public key (created if missing),
    where: the local file named in messages."""
    spec = run.spec
    if found.keypair_foreign:
        raise CbmError(f"keypair {spec.keypair_name!r} exists in cloud {spec.cloud!r} but its public key is "
                       f"not this deployment's ({key.where}): delete that keypair or set another 'prefix' "
                       "in the spec")
    if found.keypair is not None:
        return
    detail = "the local key" if key.read() is not None else "key generated locally, private key 0600"
    if run.change("create", "keypair", spec.keypair_name, detail):
        public_key = key.ensure()
        with api(f"creating keypair {spec.keypair_name}"):
            run.conn.compute.create_keypair(name=spec.keypair_name, public_key=public_key)


def delete(conn, keypair) -> None:
    step(f"delete keypair {keypair.name}")
    with api(f"deleting keypair {keypair.name}"):
        conn.compute.delete_keypair(keypair.name, ignore_missing=True)
