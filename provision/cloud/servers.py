"""The deployment's servers: one manager and `workers` workers, told apart by their metadata
(cbm-role, cbm-index). Missing ones are created, ones in state ERROR replaced, shut-off ones started,
workers beyond the spec's count deleted; a flavor that differs is only reported."""

from __future__ import annotations

from extractor.errors import CbmError, one_line
from provision.cloud import ownership
from provision.cloud.common import Run, delete_and_wait, one_or_none
from provision.cloud.connection import api, read, wait_for

# Server states `up` does not undo by itself (they were chosen by someone): status -> the command that undoes it.
PARKED = {"SUSPENDED": "resume", "PAUSED": "unpause", "SHELVED": "unshelve", "SHELVED_OFFLOADED": "unshelve",
          "RESCUE": "unrescue"}


def reconcile(run: Run, found, refs, group) -> dict:
    """(role, index) -> server, each ACTIVE when not a dry run (None in a dry run that would create it)."""
    spec = run.spec
    wanted = [("manager", 0, spec.manager_name, refs.manager_flavor_id if refs else None, spec.manager_flavor)]
    wanted += [("worker", i, spec.worker_name(i), refs.worker_flavor_id if refs else None, spec.worker_flavor)
               for i in range(1, spec.workers + 1)]
    current = {("manager", 0): found.manager}
    current.update({("worker", i): servers for i, servers in found.workers.items()})
    result = {}
    pending = []
    for role, index, name, flavor_id, flavor_name in wanted:
        server = one_or_none(current.get((role, index)) or [], lambda n, ids: (
            f"ambiguous: {n} servers are the {role} {name} of deployment {spec.name} ({ids}); "
            "delete the extra ones and run again"))
        if server is not None and (server.status or "").upper() == "ERROR":
            fault = _fault(server)
            server_was = server
            server = None
            if run.change("replace", "server", name, f"in state ERROR{': ' + fault if fault else ''}"):
                _delete(run, [server_was])
                server = _create(run, role, index, name, flavor_id, refs, group)
                pending.append(server)
        elif server is None:
            if run.change("create", "server", name, f"{role}, flavor {flavor_name}"):
                server = _create(run, role, index, name, flavor_id, refs, group)
                pending.append(server)
        else:
            _check_flavor(run, server, flavor_name)
            status = (server.status or "").upper()
            if status == "SHUTOFF":
                if run.change("start", "server", server.name, "it is shut off"):
                    with api(f"starting server {server.name}"):
                        run.conn.compute.start_server(server)
                    pending.append(server)
            elif status in PARKED:
                raise CbmError(f"server {server.name} is {status}: resume it in the cloud (openstack server "
                               f"{PARKED[status]} {server.id}) and run `cbm up` again")
            elif status != "ACTIVE":
                pending.append(server)
        result[(role, index)] = server
    # Workers beyond the spec's count (the count went down): remove them.
    extra = surplus(spec, found)
    for server in extra:
        run.change("delete", "server", server.name, "not in the spec (worker count lowered)")
    if extra and not run.dry_run:
        _delete(run, extra)
    for server in pending:
        result[_key(server)] = _wait_active(run, server)
    return result


def surplus(spec, found) -> list:
    """The deployment's servers the spec no longer has: workers beyond its count, servers of no known role."""
    return [s for i, servers in found.workers.items() if i > spec.workers for s in servers] + list(found.other_servers)


def _key(server):
    meta = server.metadata or {}
    return (meta.get("cbm-role"), int(meta.get("cbm-index", 0)))


def _create(run: Run, role, index, name, flavor_id, refs, group):
    spec = run.spec
    with api(f"creating server {name}"):
        server = run.conn.compute.create_server(
            name=name, image_id=refs.image_id, flavor_id=flavor_id, key_name=spec.keypair_name,
            networks=[{"uuid": refs.private_net_id}, {"uuid": refs.eodata_net_id}],
            # By id: security group names are not unique (nova accepts an id in "name").
            security_groups=[{"name": group.id}],
            metadata={ownership.OWNER_KEY: spec.name, "cbm-role": role, "cbm-index": str(index)},
            tags=ownership.resource_tags(spec, f"cbm-role={role}"))
    server.metadata = {ownership.OWNER_KEY: spec.name, "cbm-role": role, "cbm-index": str(index)}
    server.name = name
    return server


def _wait_active(run: Run, server):
    compute = run.conn.compute

    def failed(s):
        if (s.status or "").upper() == "ERROR":
            fault = _fault(s)
            return (f"went to state ERROR{': ' + fault if fault else ''} "
                    "(run `cbm up` again to replace it, or check the quota and flavor)")
        return None
    return wait_for(f"server {server.name}", lambda: compute.get_server(server.id),
                    done=lambda s: (s.status or "").upper() == "ACTIVE", failed=failed, timeout=run.timeout)


def _delete(run: Run, servers) -> None:
    delete_and_wait("server", servers, run.conn.compute.delete_server, run.conn.compute.get_server, run.timeout)


def delete(conn, servers, timeout: float) -> None:
    """`down`: delete the servers (a progress line each), then wait until all are gone."""
    delete_and_wait("server", servers, conn.compute.delete_server, conn.compute.get_server, timeout, announce=True)


def _check_flavor(run: Run, server, flavor_name) -> None:
    flavor = server.flavor or {}
    have = flavor.get("original_name") or flavor.get("name") if isinstance(flavor, dict) else None
    if have and have != flavor_name:
        run.warn(f"server {server.name} runs flavor {have}, the spec says {flavor_name}: not changed "
                 "(resize it in the cloud, or `cbm down` and `cbm up` with --keep-volume)")


def _fault(server) -> str:
    fault = server.fault or {}
    return one_line(fault.get("message") or "") if isinstance(fault, dict) else ""


def port(conn, server, network_id):
    """The server's port on a network (None for no server or no port)."""
    if server is None:
        return None
    ports = read(f"listing the ports of server {server.name}",
                 lambda: list(conn.network.ports(device_id=server.id, network_id=network_id)))
    return ports[0] if ports else None


def private_ip(conn, spec, server, network_id) -> str:
    """The server's address on the private network; CbmError if it has none."""
    found = port(conn, server, network_id)
    address = (found.fixed_ips or [{}])[0].get("ip_address") if found else None
    if not address:
        raise CbmError(f"server {server.name} has no address on network {spec.networks.private!r}")
    return address
