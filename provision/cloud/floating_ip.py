"""The deployment's floating IP: taken from the spec's floating pool, tagged, associated with the
manager's port on the private network."""

from __future__ import annotations

from extractor.errors import CbmError
from provision.cloud import ownership, servers
from provision.cloud.common import Run, one_or_none
from provision.cloud.connection import api
from provision.cloud.progress import step


def reconcile(run: Run, found, manager, refs):
    """The floating IP on the manager; None in a dry run that would create it. Addresses newly given
    to the manager go to run.new_addresses."""
    spec, net = run.spec, run.conn.network
    fip = one_or_none(found.floating_ips, lambda n, ids: (
        f"ambiguous: {n} floating IPs belong to deployment {spec.name}: {ids}; delete the extra ones and run again"),
        label=lambda i: f"{i.floating_ip_address} ({i.id})")
    port = servers.port(run.conn, manager, refs.private_net_id) if manager is not None and refs else None
    if manager is not None and port is None and not run.dry_run:
        raise CbmError(f"server {manager.name} has no port on network {spec.networks.private!r}: "
                       "cannot attach a floating IP")
    if fip is None:
        if not run.change("create", "floating IP", f"from {spec.networks.floating_pool}", f"on {spec.manager_name}"):
            return None
        with api(f"creating a floating IP from {spec.networks.floating_pool}"):
            fip = net.create_ip(floating_network_id=refs.external_net_id, port_id=port.id,
                                description=ownership.marker(spec))
        with api(f"tagging floating IP {fip.floating_ip_address}"):
            net.set_tags(fip, ownership.resource_tags(spec))
        run.new_addresses.add(fip.floating_ip_address)
        return fip
    if ownership.owner_tag(spec) not in (fip.tags or []):
        if run.change("update", "floating IP", fip.floating_ip_address, "add the ownership tag"):
            with api(f"tagging floating IP {fip.floating_ip_address}"):
                net.set_tags(fip, sorted(set(fip.tags or []) | set(ownership.resource_tags(spec))))
    if port is None or fip.port_id != port.id:
        if run.change("associate", "floating IP", fip.floating_ip_address, f"with {spec.manager_name}"):
            with api(f"associating floating IP {fip.floating_ip_address}"):
                fip = net.update_ip(fip, port_id=port.id)
            run.new_addresses.add(fip.floating_ip_address)
    return fip


def delete(conn, ip) -> None:
    step(f"delete floating IP {ip.floating_ip_address}")
    with api(f"deleting floating IP {ip.floating_ip_address}"):
        conn.network.delete_ip(ip, ignore_missing=True)
