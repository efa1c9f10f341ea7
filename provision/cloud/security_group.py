"""The deployment's security group and its ingress rules: SSH and the database port from the spec's
CIDRs; SSH, the database and Docker Swarm between the members. Rules not in the spec are removed."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from openstack import exceptions as os_exc

from extractor.errors import CbmError
from provision.cloud import ownership
from provision.cloud.common import Run, one_or_none
from provision.cloud.connection import api, describe, read
from provision.cloud.progress import step

SWARM_PORTS = (("tcp", 2377), ("tcp", 7946), ("udp", 7946), ("udp", 4789))


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
    """The Rule an existing rule stands for; None for egress rules (left alone). An ingress rule of a
    kind we never make (a port range, a protocol other than tcp/udp) gets port -1: never desired."""
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


def reconcile(run: Run, found):
    """The group (created and tagged if missing), with exactly the desired rules; None in a dry run
    that would create it."""
    spec, conn = run.spec, run.conn
    group = one_or_none(found.security_groups, lambda n, ids: (
        f"ambiguous: {n} security groups belong to deployment {spec.name} ({ids}); "
        "delete the extra ones (openstack security group delete ID) and run again"))
    if group is None:
        if run.change("create", "security group", spec.security_group_name):
            with api(f"creating security group {spec.security_group_name}"):
                group = conn.network.create_security_group(
                    name=spec.security_group_name, description=ownership.marker(spec))
            with api(f"tagging security group {spec.security_group_name}"):
                conn.network.set_tags(group, ownership.resource_tags(spec))
            group = read(f"reading security group {group.name}", lambda: conn.network.get_security_group(group.id))
    elif ownership.owner_tag(spec) not in (group.tags or []):
        if run.change("update", "security group", group.name, "add the ownership tag"):
            with api(f"tagging security group {group.name}"):
                conn.network.set_tags(group, sorted(set(group.tags or []) | set(ownership.resource_tags(spec))))
    _reconcile_rules(run, group)
    return group


def _reconcile_rules(run: Run, group) -> None:
    conn, name = run.conn, run.spec.security_group_name
    want = desired_rules(run.spec, group.id if group else None)
    have = {}
    for raw in (group.security_group_rules if group else []) or []:
        rule = existing_rule(raw)
        if rule is not None:
            have.setdefault(rule, raw["id"])
    for rule in sorted(want - set(have), key=lambda r: (r.port, r.protocol, str(r.remote_ip_prefix))):
        if run.change("create", "rule", name, rule.describe(name)):
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
        if rule not in want and run.change("delete", "rule", name, rule.describe(name) + " (not in the spec)"):
            with api(f"removing rule {rule.describe(name)}"):
                conn.network.delete_security_group_rule(rule_id, ignore_missing=True)


def delete(conn, group, timeout: float) -> None:
    """Ports of deleted servers may linger a moment: a group 'in use' is retried until the timeout."""
    step(f"delete security group {group.name}")
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        try:
            conn.network.delete_security_group(group, ignore_missing=True)
            return
        except os_exc.ConflictException as exc:
            if time.monotonic() > deadline:
                raise CbmError(f"deleting security group {group.name}: {describe(exc)}") from None
        except os_exc.HttpException as exc:
            if not (exc.status_code and exc.status_code >= 500) or time.monotonic() > deadline:
                raise CbmError(f"deleting security group {group.name}: {describe(exc)}") from None
        time.sleep(delay)
        delay = min(delay * 1.5, 5)
