"""The provisioning driver: `up` (and its dry run, `plan`) and `down` for one deployment spec.

up, in order: keypair, security group + rules, data volume, manager, workers, volume attachment,
floating IP; then the Ansible inventory. Each step finds what exists (by ownership marks, see
provision/owner.py), creates what is missing, repairs what is wrong and leaves alone what is right, so
a second `up` changes nothing and an `up` after a failure resumes. `down` deletes exactly what the
deployment owns, in dependency order.

Python API (used by the CLI and by the end-to-end flow):
    provision.openstack.up(spec, dry_run=False) -> UpResult   (UpResult.inventory: the hosts.yml path)
    provision.openstack.plan(spec) -> UpResult
    provision.openstack.down(spec, keep_volume=False, yes=False, confirm=None) -> DownResult
"""

from __future__ import annotations

import ipaddress
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from openstack import exceptions as os_exc

from extractor.errors import CbmError, UserError
from provision import inventory, owner, state
from provision.cloud import api, connect, describe, read, resolve, wait_for
from provision.progress import console, step

# Server states `up` does not undo by itself (they were chosen by someone): status -> the command that undoes it.
PARKED = {"SUSPENDED": "resume", "PAUSED": "unpause", "SHELVED": "unshelve", "SHELVED_OFFLOADED": "unshelve",
          "RESCUE": "unrescue"}
SWARM_PORTS = (("tcp", 2377), ("tcp", 7946), ("udp", 7946), ("udp", 4789))


@dataclass
class Change:
    action: str      # create | update | delete | replace | attach | associate
    kind: str
    name: str
    detail: str = ""

    def line(self) -> str:
        sign = {"create": "+", "delete": "-", "replace": "-/+"}.get(self.action, "~")
        detail = f"  ({self.detail})" if self.detail else ""
        return f"  {sign:>3} {self.action:<9} {self.kind:<15} {self.name}{detail}"


@dataclass
class UpResult:
    spec_name: str
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    inventory: Path | None = None
    manager_ip: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.changes)


@dataclass
class DownResult:
    deleted: list[Change] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- rules

@dataclass(frozen=True)
class Rule:
    protocol: str
    port: int
    ethertype: str = "IPv4"
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None

    def describe(self, group_name: str) -> str:
        src = self.remote_ip_prefix or f"members of {group_name}"
        return f"ingress {self.protocol}/{self.port} from {src}"


def desired_rules(spec, group_id: str | None) -> set[Rule]:
    rules = set()
    for cidrs, port in ((spec.ingress.ssh, 22), (spec.ingress.db, spec.db_port)):
        for cidr in cidrs:
            family = "IPv6" if ipaddress.ip_network(cidr).version == 6 else "IPv4"
            rules.add(Rule("tcp", port, family, remote_ip_prefix=cidr))
    # Members reach each other: SSH (jumps through the manager), the database, Docker Swarm.
    for proto, port in (("tcp", 22), ("tcp", spec.db_port), *SWARM_PORTS):
        rules.add(Rule(proto, port, remote_group_id=group_id or "self"))
    return rules


def existing_rule(raw: dict) -> Rule | None:
    """The Rule an existing ingress rule stands for (None for rules we never make, e.g. port ranges)."""
    if raw.get("direction") != "ingress":
        return None
    lo, hi = raw.get("port_range_min"), raw.get("port_range_max")
    if lo is None or lo != hi or raw.get("protocol") not in ("tcp", "udp"):
        return Rule(str(raw.get("protocol")), -1, raw.get("ethertype", "IPv4"),
                    raw.get("remote_ip_prefix"), raw.get("remote_group_id"))
    prefix = raw.get("remote_ip_prefix")
    if prefix:
        prefix = str(ipaddress.ip_network(prefix, strict=False))
    return Rule(raw["protocol"], int(lo), raw.get("ethertype", "IPv4"), prefix, raw.get("remote_group_id"))


# ------------------------------------------------------------------------------------------------ up

class _Up:
    def __init__(self, conn, spec, dry_run: bool):
        self.conn = conn
        self.spec = spec
        self.dry_run = dry_run
        self.result = UpResult(spec.name, dry_run)
        self.timeout = spec.wait_timeout
        self.new_addresses: set[str] = set()

    def change(self, action, kind, name, detail="") -> bool:
        """Record a change; True when it must be carried out now (not a dry run)."""
        c = Change(action, kind, name, detail)
        self.result.changes.append(c)
        if not self.dry_run:
            step(f"{action} {kind} {name}" + (f" ({detail})" if detail else ""))
        return not self.dry_run

    def warn(self, text: str) -> None:
        self.result.warnings.append(text)

    # -- keypair
    def keypair(self, found):
        spec = self.spec
        if found.keypair_foreign:
            raise CbmError(f"keypair {spec.keypair_name!r} exists in cloud {spec.cloud!r} but its public key is "
                           f"not this deployment's ({state.state_dir(spec.name, create=False)}/"
                           f"{state.KEY_FILE}.pub): delete that keypair or set another 'prefix' in the spec")
        if found.keypair is not None:
            return
        have_key = state.read_public_key(spec.name) is not None
        detail = "the local key" if have_key else "key generated locally, private key 0600"
        if self.change("create", "keypair", spec.keypair_name, detail):
            public_key = state.ensure_ssh_key(spec.name)
            with api(f"creating keypair {spec.keypair_name}"):
                self.conn.compute.create_keypair(name=spec.keypair_name, public_key=public_key)

    # -- security group
    def security_group(self, found):
        spec, conn = self.spec, self.conn
        groups = found.security_groups
        if len(groups) > 1:
            ids = ", ".join(g.id for g in groups)
            raise CbmError(f"ambiguous: {len(groups)} security groups belong to deployment {spec.name} ({ids}); "
                           "delete the extra ones (openstack security group delete ID) and run again")
        group = groups[0] if groups else None
        if group is None:
            if self.change("create", "security group", spec.security_group_name):
                with api(f"creating security group {spec.security_group_name}"):
                    group = conn.network.create_security_group(
                        name=spec.security_group_name, description=owner.marker(spec))
                with api(f"tagging security group {spec.security_group_name}"):
                    conn.network.set_tags(group, owner.resource_tags(spec))
                group = self._refetch_group(group)
        elif owner.owner_tag(spec) not in (group.tags or []):
            if self.change("update", "security group", group.name, "add the ownership tag"):
                with api(f"tagging security group {group.name}"):
                    conn.network.set_tags(group, sorted(set(group.tags or []) | set(owner.resource_tags(spec))))

        want = desired_rules(spec, group.id if group else None)
        have = {}
        for raw in (group.security_group_rules if group else []) or []:
            rule = existing_rule(raw)
            if rule is not None:
                have.setdefault(rule, raw["id"])
        name = spec.security_group_name
        for rule in sorted(want - set(have), key=lambda r: (r.port, r.protocol, str(r.remote_ip_prefix))):
            if self.change("create", "rule", name, rule.describe(name)):
                kwargs = dict(security_group_id=group.id, direction="ingress", ethertype=rule.ethertype,
                              protocol=rule.protocol, port_range_min=rule.port, port_range_max=rule.port)
                if rule.remote_ip_prefix:
                    kwargs["remote_ip_prefix"] = rule.remote_ip_prefix
                else:
                    kwargs["remote_group_id"] = group.id
                with api(f"adding rule {rule.describe(name)}"):
                    try:
                        conn.network.create_security_group_rule(**kwargs)
                    except os_exc.ConflictException as exc:
                        if "exists" not in str(exc.details or exc).lower():
                            raise
        for rule, rule_id in have.items():
            if rule not in want and self.change("delete", "rule", name, rule.describe(name) + " (not in the spec)"):
                with api(f"removing rule {rule.describe(name)}"):
                    conn.network.delete_security_group_rule(rule_id, ignore_missing=True)
        return group

    def _refetch_group(self, group):
        return read(f"reading security group {group.name}", lambda: self.conn.network.get_security_group(group.id))

    # -- volume
    def volume(self, found):
        spec, conn = self.spec, self.conn
        vols = found.volumes
        if len(vols) > 1:
            ids = ", ".join(v.id for v in vols)
            raise CbmError(f"ambiguous: {len(vols)} volumes belong to deployment {spec.name} ({ids}); keep the one "
                           "with the data, delete or detag the others (metadata cbm-deployment), and run again")
        vol = vols[0] if vols else None
        detail = f"{spec.volume.size} GB" + (f", type {spec.volume.type}" if spec.volume.type else "")
        if vol is not None and vol.status == "error":
            if not self.change("replace", "volume", spec.volume_name, "in state error, holds no data"):
                return None
            self._delete_volume(vol)
            vol = None
        elif vol is None and not self.change("create", "volume", spec.volume_name, detail):
            return None
        if vol is None:
            kwargs = dict(name=spec.volume_name, size=spec.volume.size,
                          metadata={owner.OWNER_KEY: spec.name, "cbm-role": "data"},
                          description=owner.marker(spec))
            if spec.volume.type:
                kwargs["volume_type"] = spec.volume.type
            with api(f"creating volume {spec.volume_name}"):
                vol = conn.block_storage.create_volume(**kwargs)
        elif vol.size < spec.volume.size:
            self.warn(f"volume {vol.name} has {vol.size} GB, the spec asks {spec.volume.size} GB: not resized "
                      "(extend it with `openstack volume set --size`, then grow the filesystem)")
        return vol   # not waited for here: it gets ready while the servers boot

    def _wait_volume(self, vol, statuses):
        bs = self.conn.block_storage
        return wait_for(f"volume {vol.name or vol.id}", lambda: bs.get_volume(vol.id),
                        done=lambda v: v.status in statuses,
                        failed=lambda v: f"went to state {v.status} (run `cbm up` again to replace it)"
                        if v.status == "error" else f"went to state {v.status}" if v.status.startswith("error") else None,
                        timeout=self.timeout)

    def _delete_volume(self, vol):
        bs = self.conn.block_storage
        with api(f"deleting volume {vol.name or vol.id}"):
            bs.delete_volume(vol, ignore_missing=True)
        wait_for(f"deletion of volume {vol.name or vol.id}", lambda: bs.get_volume(vol.id), done=lambda v: False,
                 timeout=self.timeout, gone_ok=True)

    # -- servers
    def servers(self, found, refs, group):
        spec = self.spec
        wanted = [("manager", 0, spec.manager_name, refs.manager_flavor_id if refs else None, spec.manager_flavor)]
        wanted += [("worker", i, spec.worker_name(i), refs.worker_flavor_id if refs else None, spec.worker_flavor)
                   for i in range(1, spec.workers + 1)]
        current = {("manager", 0): found.manager}
        current.update({("worker", i): servers for i, servers in found.workers.items()})
        result = {}
        pending = []
        for role, index, name, flavor_id, flavor_name in wanted:
            servers = current.get((role, index)) or []
            if len(servers) > 1:
                ids = ", ".join(s.id for s in servers)
                raise CbmError(f"ambiguous: {len(servers)} servers are the {role} {name} of deployment "
                               f"{spec.name} ({ids}); delete the extra ones and run again")
            server = servers[0] if servers else None
            if server is not None and (server.status or "").upper() == "ERROR":
                fault = _fault(server)
                server_was = server
                server = None
                if self.change("replace", "server", name, f"in state ERROR{': ' + fault if fault else ''}"):
                    self._delete_servers([server_was])
                    server = self._create_server(role, index, name, flavor_id, refs, group)
                    pending.append(server)
            elif server is None:
                if self.change("create", "server", name, f"{role}, flavor {flavor_name}"):
                    server = self._create_server(role, index, name, flavor_id, refs, group)
                    pending.append(server)
            else:
                self._check_flavor(server, flavor_name)
                status = (server.status or "").upper()
                if status == "SHUTOFF":
                    if self.change("start", "server", server.name, "it is shut off"):
                        with api(f"starting server {server.name}"):
                            self.conn.compute.start_server(server)
                        pending.append(server)
                elif status in PARKED:
                    raise CbmError(f"server {server.name} is {status}: resume it in the cloud (openstack server "
                                   f"{PARKED[status]} {server.id}) and run `cbm up` again")
                elif status != "ACTIVE":
                    pending.append(server)
            result[(role, index)] = server
        # Workers beyond the spec's count (the count went down): remove them.
        extra = [s for i, servers in found.workers.items() if i > spec.workers for s in servers]
        extra += found.other_servers
        for server in extra:
            self.change("delete", "server", server.name, "not in the spec (worker count lowered)")
        if extra and not self.dry_run:
            self._delete_servers(extra)
        for server in pending:
            result[self._key(server)] = self._wait_active(server)
        return result

    @staticmethod
    def _key(server):
        meta = server.metadata or {}
        return (meta.get("cbm-role"), int(meta.get("cbm-index", 0)))

    def _create_server(self, role, index, name, flavor_id, refs, group):
        spec = self.spec
        with api(f"creating server {name}"):
            server = self.conn.compute.create_server(
                name=name, image_id=refs.image_id, flavor_id=flavor_id, key_name=spec.keypair_name,
                networks=[{"uuid": refs.private_net_id}, {"uuid": refs.eodata_net_id}],
                # By id: security group names are not unique (nova accepts an id in "name").
                security_groups=[{"name": group.id}],
                metadata={owner.OWNER_KEY: spec.name, "cbm-role": role, "cbm-index": str(index)},
                tags=owner.resource_tags(spec, f"cbm-role={role}"))
        server.metadata = {owner.OWNER_KEY: spec.name, "cbm-role": role, "cbm-index": str(index)}
        server.name = name
        return server

    def _wait_active(self, server):
        compute = self.conn.compute

        def failed(s):
            if (s.status or "").upper() == "ERROR":
                fault = _fault(s)
                return (f"went to state ERROR{': ' + fault if fault else ''} "
                        "(run `cbm up` again to replace it, or check the quota and flavor)")
            return None
        return wait_for(f"server {server.name}", lambda: compute.get_server(server.id),
                        done=lambda s: (s.status or "").upper() == "ACTIVE", failed=failed, timeout=self.timeout)

    def _delete_servers(self, servers):
        compute = self.conn.compute
        for server in servers:
            with api(f"deleting server {server.name}"):
                compute.delete_server(server, ignore_missing=True)
        for server in servers:
            wait_for(f"deletion of server {server.name}", lambda s=server: compute.get_server(s.id),
                     done=lambda s: False, timeout=self.timeout, gone_ok=True)

    def _check_flavor(self, server, flavor_name):
        flavor = server.flavor or {}
        have = flavor.get("original_name") or flavor.get("name") if isinstance(flavor, dict) else None
        if have and have != flavor_name:
            self.warn(f"server {server.name} runs flavor {have}, the spec says {flavor_name}: not changed "
                      "(resize it in the cloud, or `cbm down` and `cbm up` with --keep-volume)")

    # -- networking details
    def port(self, server, network_id):
        if server is None:
            return None
        ports = read(f"listing the ports of server {server.name}",
                     lambda: list(self.conn.network.ports(device_id=server.id, network_id=network_id)))
        return ports[0] if ports else None

    # -- attachment
    def attachment(self, vol, manager) -> str | None:
        """Attach the volume to the manager; return the device the cloud reports."""
        spec = self.spec
        if vol is None or manager is None:
            self.change("attach", "volume", spec.volume_name, f"to {spec.manager_name}")
            return None
        for att in vol.attachments or []:
            if att.get("server_id") == manager.id:
                return att.get("device")
        others = [a.get("server_id") for a in vol.attachments or []]
        if others:
            raise CbmError(f"volume {vol.name} is attached to server(s) {', '.join(others)}, not to the manager "
                           f"{manager.name}: detach it (openstack server remove volume) and run again")
        if not self.change("attach", "volume", vol.name, f"to {manager.name}"):
            return None
        for attempt in (1, 2):   # an attachment that fails in the cloud's background is retried once
            with api(f"attaching volume {vol.name} to {manager.name}"):
                att = self.conn.compute.create_volume_attachment(manager, vol.id)
            try:
                vol = self._wait_attached(vol, manager)
                break
            except _AttachFailed as exc:
                if attempt == 2:
                    raise CbmError(str(exc)) from None
                step(f"{exc}; attaching again")
        for a in vol.attachments or []:
            if a.get("server_id") == manager.id and a.get("device"):
                return a["device"]
        return att.device

    def _wait_attached(self, vol, manager):
        seen = []

        def failed(v):
            seen.append(v.status)
            if v.status.startswith("error"):
                return f"went to state {v.status}"
            if v.status == "available" and "attaching" in seen:
                raise _AttachFailed(f"volume {vol.name}: attaching it to {manager.name} failed in the cloud "
                                    "(it went back to available); run `cbm up` again to retry")
            return None
        bs = self.conn.block_storage
        return wait_for(f"volume {vol.name} attaching", lambda: bs.get_volume(vol.id),
                        done=lambda v: v.status == "in-use", failed=failed, timeout=self.timeout)

    # -- floating IP
    def floating_ip(self, found, manager, refs):
        spec, net = self.spec, self.conn.network
        ips = found.floating_ips
        if len(ips) > 1:
            ids = ", ".join(f"{i.floating_ip_address} ({i.id})" for i in ips)
            raise CbmError(f"ambiguous: {len(ips)} floating IPs belong to deployment {spec.name}: {ids}; "
                           "delete the extra ones and run again")
        fip = ips[0] if ips else None
        port = self.port(manager, refs.private_net_id) if manager is not None and refs else None
        if manager is not None and port is None and not self.dry_run:
            raise CbmError(f"server {manager.name} has no port on network {spec.networks.private!r}: "
                           "cannot attach a floating IP")
        if fip is None:
            if not self.change("create", "floating IP", f"from {spec.networks.floating_pool}",
                               f"on {spec.manager_name}"):
                return None
            with api(f"creating a floating IP from {spec.networks.floating_pool}"):
                fip = net.create_ip(floating_network_id=refs.external_net_id, port_id=port.id,
                                    description=owner.marker(spec))
            with api(f"tagging floating IP {fip.floating_ip_address}"):
                net.set_tags(fip, owner.resource_tags(spec))
            self.new_addresses.add(fip.floating_ip_address)
            return fip
        if owner.owner_tag(spec) not in (fip.tags or []):
            if self.change("update", "floating IP", fip.floating_ip_address, "add the ownership tag"):
                with api(f"tagging floating IP {fip.floating_ip_address}"):
                    net.set_tags(fip, sorted(set(fip.tags or []) | set(owner.resource_tags(spec))))
        if port is None or fip.port_id != port.id:
            if self.change("associate", "floating IP", fip.floating_ip_address, f"with {spec.manager_name}"):
                with api(f"associating floating IP {fip.floating_ip_address}"):
                    fip = net.update_ip(fip, port_id=port.id)
                self.new_addresses.add(fip.floating_ip_address)
        return fip

    # -- all
    def run(self):
        spec, conn = self.spec, self.conn
        refs = resolve(conn, spec)
        found = owner.find(conn, spec)
        self.keypair(found)
        group = self.security_group(found)
        vol = self.volume(found)
        servers = self.servers(found, refs, group)
        manager = servers.get(("manager", 0))
        if vol is not None and manager is not None and not self.dry_run:
            vol = self._wait_volume(vol, ("available", "in-use"))
        device = self.attachment(vol, manager)
        fip = self.floating_ip(found, manager, refs)
        if self.dry_run:
            return self.result
        created = {s.id for s in servers.values()} - {s.id for s in found.servers()}
        hosts = []
        for (role, index), server in sorted(servers.items(), key=lambda kv: (kv[0][0] != "manager", kv[0][1])):
            port = self.port(server, refs.private_net_id)
            private_ip = (port.fixed_ips or [{}])[0].get("ip_address") if port else None
            if not private_ip:
                raise CbmError(f"server {server.name} has no address on network {spec.networks.private!r}")
            if server.id in created:
                self.new_addresses.add(private_ip)
            hosts.append(inventory.Host(name=server.name, role=role, private_ip=private_ip, server_id=server.id))
        if created and fip is not None:
            self.new_addresses.add(fip.floating_ip_address)
        state.forget_hosts(spec.name, self.new_addresses)
        self.result.manager_ip = fip.floating_ip_address
        self.result.inventory = inventory.write(spec, hosts, manager_ip=fip.floating_ip_address,
                                                data_device=device, volume_id=vol.id)
        return self.result


class _AttachFailed(Exception):
    pass


def _fault(server) -> str:
    fault = server.fault or {}
    return " ".join(str(fault.get("message") or "").split()) if isinstance(fault, dict) else ""


def up(spec, dry_run: bool = False) -> UpResult:
    """Create what is missing, repair what is wrong, write the inventory. The hook `cbm up` calls
    (the end-to-end flow adds configuration after it)."""
    conn = connect(spec)
    try:
        return _Up(conn, spec, dry_run).run()
    finally:
        conn.close()


def plan(spec) -> UpResult:
    """What `up` would do; touches nothing."""
    return up(spec, dry_run=True)


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


def down(spec, keep_volume: bool = False, yes: bool = False, confirm=None) -> DownResult:
    """Delete what the deployment owns (FIP, servers, volume unless kept, security group, keypair).

    Lists it first; asks `confirm(question) -> bool` (default: a terminal prompt) unless yes."""
    conn = connect(spec)
    try:
        found = owner.find(conn, spec)
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
        if not yes:
            ask = confirm or _terminal_confirm
            if not ask(f"Delete these {len(items)} resources of deployment {spec.name}?"):
                raise UserError("down: cancelled, nothing was deleted")
        _Down(conn, spec).run(found, keep_volume)
        known_hosts = state.state_root() / spec.name / "known_hosts"
        known_hosts.unlink(missing_ok=True)
        return result
    finally:
        conn.close()


def _terminal_confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UserError("down: refusing to delete without confirmation: run it on a terminal or pass --yes")
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


class _Down:
    def __init__(self, conn, spec):
        self.conn = conn
        self.spec = spec
        self.timeout = spec.wait_timeout

    def run(self, found, keep_volume):
        conn = self.conn
        for ip in found.floating_ips:
            step(f"delete floating IP {ip.floating_ip_address}")
            with api(f"deleting floating IP {ip.floating_ip_address}"):
                conn.network.delete_ip(ip, ignore_missing=True)
        servers = found.servers()
        self.server_ids = [s.id for s in servers]
        for server in servers:
            step(f"delete server {server.name}")
            with api(f"deleting server {server.name}"):
                conn.compute.delete_server(server, ignore_missing=True)
        for server in servers:
            wait_for(f"deletion of server {server.name}", lambda s=server: conn.compute.get_server(s.id),
                     done=lambda s: False, timeout=self.timeout, gone_ok=True)
        if not keep_volume:
            for vol in found.volumes:
                self._delete_volume(vol)
        else:
            for vol in found.volumes:   # detached by the server deletions: wait so a next `up` can attach
                wait_for(f"volume {vol.name} detaching", lambda v=vol: conn.block_storage.get_volume(v.id),
                         done=lambda v: v.status in ("available", "error"), timeout=self.timeout)
        for group in found.security_groups:
            self._delete_group(group)
        if found.keypair is not None:
            step(f"delete keypair {found.keypair.name}")
            with api(f"deleting keypair {found.keypair.name}"):
                conn.compute.delete_keypair(found.keypair.name, ignore_missing=True)

    def _delete_volume(self, vol):
        bs = self.conn.block_storage
        name = vol.name or vol.id
        step(f"delete volume {name}")
        ours = set(self.server_ids)
        foreign = [a.get("server_id") for a in vol.attachments or [] if a.get("server_id") not in ours]
        if foreign:
            raise CbmError(f"volume {name} is attached to server(s) {', '.join(foreign)} that are not part of "
                           f"deployment {self.spec.name}: detach it there first, or use --keep-volume")
        wait_for(f"volume {name} detaching", lambda: bs.get_volume(vol.id),
                 done=lambda v: v.status in ("available", "error") or v.status.startswith("error"),
                 timeout=self.timeout)
        with api(f"deleting volume {name}"):
            bs.delete_volume(vol, ignore_missing=True)
        wait_for(f"deletion of volume {name}", lambda: bs.get_volume(vol.id), done=lambda v: False,
                 timeout=self.timeout, gone_ok=True)

    def _delete_group(self, group):
        """Ports of deleted servers may linger a moment: a group 'in use' is retried until the timeout."""
        step(f"delete security group {group.name}")
        deadline = time.monotonic() + self.timeout
        delay = 0.5
        while True:
            try:
                self.conn.network.delete_security_group(group, ignore_missing=True)
                return
            except os_exc.ConflictException as exc:
                if time.monotonic() > deadline:
                    raise CbmError(f"deleting security group {group.name}: {describe(exc)}") from None
            except os_exc.HttpException as exc:
                if not (exc.status_code and exc.status_code >= 500) or time.monotonic() > deadline:
                    raise CbmError(f"deleting security group {group.name}: {describe(exc)}") from None
            time.sleep(delay)
            delay = min(delay * 1.5, 5)
