"""`up` (and its dry run) and `down` of one deployment spec in its cloud.

up, in order: keypair, security group + rules, data volume, manager, workers, volume attachment,
floating IP. Each reconciler (keypair.py, security_group.py, volume.py, servers.py, floating_ip.py)
takes what exists (found by ownership marks, see ownership.py), creates what is missing, repairs what
is wrong and leaves alone what is right, so a second `up` changes nothing and an `up` after a failure
resumes. `down` deletes exactly what the deployment owns, in dependency order.

No local file is touched here: the caller hands in the deployment's key (`key.read()`, `key.ensure()`,
`key.where`) and writes the inventory and known_hosts from what `up` returns.

    up(spec, key, dry_run=False, replace_volume=False) -> UpResult
    leaving(spec, key) -> [server name]   what `up` would delete: the servers the spec no longer has
    down(spec, key, keep_volume=False, yes=False, confirm=None, before_delete=None) -> DownResult
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from extractor.errors import UserError
from provision.cloud import floating_ip, keypair, ownership, security_group, servers, volume
from provision.cloud.common import Change, Run
from provision.cloud.connection import connect, resolve
from provision.cloud.progress import console

__all__ = ["Change", "DownResult", "Host", "UpResult", "down", "leaving", "up"]


@dataclass(frozen=True)
class Host:
    """A server as `up` left it, for the inventory."""
    name: str
    role: str            # manager | worker
    private_ip: str
    server_id: str


@dataclass
class UpResult:
    spec_name: str
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)      # manager first; empty in a dry run
    manager_ip: str | None = None
    data_device: str | None = None
    volume_id: str | None = None
    new_addresses: set[str] = field(default_factory=set)  # addresses now on new servers: forget their host keys


@dataclass
class DownResult:
    deleted: list[Change] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ up

def up(spec, key, dry_run: bool = False, replace_volume: bool = False) -> UpResult:
    """Create what is missing, repair what is wrong; with dry_run only record what would change.

    `key`: read() -> the deployment's local public key or None; ensure() -> the public key, created if
    missing (called only to create the keypair); where: the local key file, for messages.
    `replace_volume`: a data volume in state error that was ever attached may be deleted and replaced
    by a blank one (without it, `up` stops before changing anything: volume.guard)."""
    conn = connect(spec)
    try:
        run = Run(conn, spec, dry_run)
        result = UpResult(spec.name, dry_run, changes=run.changes, warnings=run.warnings)
        _up(run, key, result, replace_volume)
        result.new_addresses = run.new_addresses
        return result
    finally:
        conn.close()


def _up(run: Run, key, result: UpResult, replace_volume: bool) -> None:
    spec, conn = run.spec, run.conn
    refs = resolve(conn, spec)
    found = ownership.find(conn, spec, key.read())
    volume.guard(run, found, replace_volume)
    keypair.reconcile(run, found, key)
    group = security_group.reconcile(run, found)
    vol = volume.reconcile(run, found, replace_volume)
    by_role = servers.reconcile(run, found, refs, group)
    manager = by_role.get(("manager", 0))
    if vol is not None and manager is not None and not run.dry_run:
        vol = volume.wait_ready(run, vol)
    device = volume.attach(run, vol, manager)
    fip = floating_ip.reconcile(run, found, manager, refs)
    if run.dry_run:
        return
    created = {s.id for s in by_role.values()} - {s.id for s in found.servers()}
    for (role, index), server in sorted(by_role.items(), key=lambda kv: (kv[0][0] != "manager", kv[0][1])):
        address = servers.private_ip(conn, spec, server, refs.private_net_id)
        if server.id in created:
            run.new_addresses.add(address)
        result.hosts.append(Host(name=server.name, role=role, private_ip=address, server_id=server.id))
    if created and fip is not None:
        run.new_addresses.add(fip.floating_ip_address)
    result.manager_ip = fip.floating_ip_address
    result.data_device = device
    result.volume_id = vol.id


def leaving(spec, key) -> list[str]:
    """The names of the servers the next `up` would delete (workers beyond the spec's count, servers of no
    known role); nothing is changed. The caller takes them out of what runs on them first."""
    conn = connect(spec)
    try:
        return [server.name for server in servers.surplus(spec, ownership.find(conn, spec, key.read()))]
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- down

def _down_list(spec, found, keep_volume: bool) -> tuple[list[Change], list[str]]:
    items, kept = [], []
    for ip in found.floating_ips:
        items.append(Change("delete", "floating IP", ip.floating_ip_address))
    for server in found.servers():
        items.append(Change("delete", "server", server.name, server.id))
    for vol in found.volumes:
        if keep_volume:
            kept.append(f"volume {vol.name} ({vol.id}) kept: a later `cbm up` re-attaches it")
        else:
            items.append(Change("delete", "volume", vol.name or vol.id, f"{vol.size} GB, {vol.id}"))
    for group in found.security_groups:
        items.append(Change("delete", "security group", group.name, group.id))
    if found.keypair is not None:
        items.append(Change("delete", "keypair", found.keypair.name))
    if found.keypair_foreign:
        kept.append(f"keypair {spec.keypair_name} left alone: its public key is not this deployment's local key")
    return items, kept


def down(spec, key, keep_volume: bool = False, yes: bool = False,
         confirm: Callable[[str], bool] | None = None,
         before_delete: Callable[[], None] | None = None) -> DownResult:
    """Delete what the deployment owns (FIP, servers, volume unless kept, security group, keypair).

    Lists it first; unless `yes`, `confirm(question) -> bool` decides (no confirm: nothing is deleted).
    `key.read()`: the local public key, which tells whether the keypair of the deployment's name is ours.
    `before_delete()`: called once confirmed, before the first deletion (the database backup); an
    exception from it stops `down` with nothing deleted."""
    conn = connect(spec)
    try:
        found = ownership.find(conn, spec, key.read())
        items, kept = _down_list(spec, found, keep_volume)
        result = DownResult(deleted=items, kept=kept)
        if not items:
            console.print(f"Nothing of deployment {spec.name} in cloud {spec.cloud}.")
            for line in kept:
                console.print(f"  {line}")
            return result
        print(f"Deployment {spec.name} in cloud {spec.cloud}: {len(items)} resources to delete:")
        for item in items:
            print(item.line())
        for line in kept:
            print(f"  {line}")
        if not yes and not (confirm and confirm(f"Delete these {len(items)} resources of deployment {spec.name}?")):
            raise UserError("down: cancelled, nothing was deleted")
        if before_delete is not None:
            before_delete()
        _delete(conn, spec, found, keep_volume)
        return result
    finally:
        conn.close()


def _delete(conn, spec, found, keep_volume: bool) -> None:
    timeout = spec.wait_timeout
    for ip in found.floating_ips:
        floating_ip.delete(conn, ip)
    deleted = found.servers()
    servers.delete(conn, deleted, timeout)
    for vol in found.volumes:
        if keep_volume:   # detached by the server deletions: wait so a next `up` can attach
            volume.wait_detached(conn, vol, timeout)
        else:
            volume.delete(conn, spec, vol, [s.id for s in deleted], timeout)
    for group in found.security_groups:
        security_group.delete(conn, group, timeout)
    if found.keypair is not None:
        keypair.delete(conn, found.keypair)

