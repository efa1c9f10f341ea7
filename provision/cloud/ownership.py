"""Which cloud resources belong to a deployment: decided by ownership marks, never by name alone.

  servers          tags `cbm-deployment=<name>` (+ metadata cbm-deployment/cbm-role/cbm-index, set in the
                   create call, so a server is never unmarked)
  security groups  tag `cbm-deployment=<name>`, and the description `cbm-onboard deployment <name>` set in
  floating IPs     the create call (tags need a second call; the description covers a failure in between)
  volumes          metadata cbm-deployment=<name> (volumes have no tags; metadata is filtered client-side,
                   since the SDK's server-side metadata filter does not work against cinder)
  (data volume)    metadata cbm-attached: "no" in the create call, the UTC time of the first attachment
                   once `up` attached it or saw it attached. A volume that was ever attached may hold data:
                   `up` never deletes it without --replace-volume (a volume without the mark counts as
                   attached: only a volume provably never attached is replaced without asking)
  keypair          no tags in nova: ours when its public key is the deployment's local public key (the
                   caller reads it; this layer touches no local file)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from openstack import exceptions as os_exc

from provision.cloud.connection import api

OWNER_KEY = "cbm-deployment"
ATTACHED_KEY = "cbm-attached"
NEVER_ATTACHED = "no"


def owner_tag(spec) -> str:
    return f"{OWNER_KEY}={spec.name}"


def marker(spec) -> str:
    return f"cbm-onboard deployment {spec.name}"


def resource_tags(spec, *extra: str) -> list[str]:
    return [owner_tag(spec), *extra, *spec.tags]


def owns_tagged(spec, res) -> bool:
    """Neutron resources: the ownership tag, or the description written in the create call."""
    return owner_tag(spec) in (getattr(res, "tags", None) or []) or \
        (getattr(res, "description", None) or "") == marker(spec)


def owns_server(spec, server) -> bool:
    return owner_tag(spec) in (server.tags or []) or (server.metadata or {}).get(OWNER_KEY) == spec.name


def owns_volume(spec, volume) -> bool:
    return (volume.metadata or {}).get(OWNER_KEY) == spec.name


def was_attached(volume) -> bool:
    """Whether the volume may hold data: attached now, marked as attached once, or without the mark."""
    return bool(volume.attachments) or (volume.metadata or {}).get(ATTACHED_KEY) != NEVER_ATTACHED


@dataclass
class Found:
    """What exists of a deployment in the cloud right now."""

    keypair: object | None = None
    keypair_foreign: bool = False           # a keypair with our name exists but is not provably ours
    security_groups: list = field(default_factory=list)
    volumes: list = field(default_factory=list)
    manager: list = field(default_factory=list)
    workers: dict = field(default_factory=dict)    # index -> [servers]
    other_servers: list = field(default_factory=list)
    floating_ips: list = field(default_factory=list)

    def servers(self) -> list:
        out = list(self.manager) + list(self.other_servers)
        for index in sorted(self.workers):
            out += self.workers[index]
        return out


def same_key(a: str | None, b: str | None) -> bool:
    """Compare two OpenSSH public key lines by type and key data (comments differ)."""
    if not a or not b:
        return False
    return a.split()[:2] == b.split()[:2]


def _by_id(*lists) -> list:
    seen = {}
    for items in lists:
        for item in items:
            seen.setdefault(item.id, item)
    return list(seen.values())


def find(conn, spec, public_key: str | None) -> Found:
    """Look up every resource this deployment owns (a few list calls, filtered by ownership).

    `public_key`: the deployment's local public key (None if this machine has none)."""
    found = Found()
    with api(f"looking up keypair {spec.keypair_name}"):
        try:
            kp = conn.compute.get_keypair(spec.keypair_name)
        except os_exc.NotFoundException:
            kp = None
    if kp is not None:
        if same_key(kp.public_key, public_key):
            found.keypair = kp
        else:
            found.keypair_foreign = True

    tag = owner_tag(spec)
    with api("listing security groups"):
        groups = _by_id(conn.network.security_groups(tags=[tag]),
                        conn.network.security_groups(name=spec.security_group_name))
    found.security_groups = [g for g in groups if owns_tagged(spec, g)]

    with api("listing volumes"):
        found.volumes = [v for v in conn.block_storage.volumes(details=True) if owns_volume(spec, v)]

    with api("listing servers"):
        # Compute tag filters take one comma-joined string, not a list.
        servers = [s for s in conn.compute.servers(details=True, tags=tag) if owns_server(spec, s)]
    for server in servers:
        meta = server.metadata or {}
        role = meta.get("cbm-role")
        if role == "manager":
            found.manager.append(server)
        elif role == "worker" and str(meta.get("cbm-index", "")).isdigit():
            found.workers.setdefault(int(meta["cbm-index"]), []).append(server)
        else:
            found.other_servers.append(server)

    with api("listing floating IPs"):
        ips = _by_id(conn.network.ips(tags=[tag]), conn.network.ips(description=marker(spec)))
    found.floating_ips = [ip for ip in ips if owns_tagged(spec, ip)]
    return found
