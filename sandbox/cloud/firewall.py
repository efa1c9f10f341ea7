"""Security groups enforced on the hosts, as Neutron does on a port: ingress by protocol, port range and
remote CIDR or remote group; everything else that enters through a port is dropped, except the
replies of connections the host made (conntrack ESTABLISHED/RELATED). Egress is not filtered.

Each host gets one iptables chain, CBM-SG-INGRESS in its mangle table, hooked first in PREROUTING for
the packets arriving on its cloud interfaces (`-i eth+`; loopback and the host's own containers on
docker0 and friends are not filtered). mangle PREROUTING runs before the nat table, so a port published
by the host's own dockerd (`docker run -p`, a DNAT) is filtered by the port the client asked for, and
dockerd, which rewrites the filter and nat tables when it (re)starts, never touches the chain.

The rules of a host are computed here from the state (`ruleset`); `sync` pushes them to every host whose
rules changed: `docker exec` of /usr/local/sbin/cbm-sandbox-firewall in a running host (it keeps them in
/etc/cbm-sandbox/firewall and swaps the chain in one iptables-restore), `docker cp` of that file in a
stopped one; cbm-init applies the file at every boot before any service starts. Call `sync` after
anything that changes a host's rules: a rule added or deleted, a port's groups, a port created or
deleted (remote-group address sets), a server created or destroyed.

Only IPv4: the sandbox's networks have no IPv6, so IPv6 rules are stored but have nothing to filter.
"""

from __future__ import annotations

import logging

from sandbox.cloud.state import Cloud

log = logging.getLogger(__name__)

CHAIN = "CBM-SG-INGRESS"
PORTS = {"tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp"}   # protocols with a port range


def _match(rule: dict) -> str | None:
    """The iptables match of a rule's protocol and ports; None when it cannot apply to IPv4."""
    proto = (rule.get("protocol") or "any").lower()
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    if proto == "any":
        return ""
    if proto in PORTS:
        out = f" -p {PORTS[proto]}"
        if lo is not None:
            out += f" -m {PORTS[proto]} --dport {lo}" + (f":{hi}" if hi is not None and hi != lo else "")
        return out
    if proto in ("icmp", "1"):  # Neutron: port_range_min is the ICMP type, port_range_max its code
        if lo is None:
            return " -p icmp"
        return f" -p icmp -m icmp --icmp-type {lo}" + (f"/{hi}" if hi is not None else "")
    if proto in ("icmpv6", "ipv6-icmp", "58"):
        return None
    return f" -p {proto}"


def group_addresses(cloud: Cloud, group_id: str) -> list[str]:
    """The fixed IPs of every port in a group (what a remote_group_id rule admits)."""
    return sorted({ip["ip_address"] for port in cloud.data["ports"].values()
                   if group_id in port.get("security_groups", []) for ip in port["fixed_ips"]},
                  key=lambda a: tuple(int(x) for x in a.split(".")))


def _destinations(cloud: Cloud, port: dict) -> list[str]:
    """A port's addresses as packets reach the host: its fixed IPs and its floating IPs."""
    out = [ip["ip_address"] for ip in port["fixed_ips"]]
    out += [f["floating_ip_address"] for f in cloud.data["floatingips"].values() if f.get("port_id") == port["id"]]
    return out


def ruleset(cloud: Cloud, srv: dict) -> str:
    """The iptables-restore input of a server: its chain, with a rule per security-group rule and port."""
    lines = ["*mangle", f":{CHAIN} - [0:0]",
             f"-A {CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    rules = sorted(cloud.data["security_group_rules"].values(), key=lambda r: r["id"])
    for pid in srv["port_ids"]:
        port = cloud.data["ports"].get(pid)
        dest = ",".join(_destinations(cloud, port)) if port else ""
        if not dest:
            continue
        if not port.get("port_security_enabled", True):
            lines.append(f"-A {CHAIN} -d {dest} -m comment --comment \"port {pid[:8]}: no port security\" -j RETURN")
            continue
        for rule in rules:
            if rule["security_group_id"] not in port.get("security_groups", []) or rule["direction"] != "ingress" \
                    or rule["ethertype"] != "IPv4":
                continue
            match = _match(rule)
            if match is None:
                continue
            if rule.get("remote_group_id"):
                sources = group_addresses(cloud, rule["remote_group_id"])
                if not sources:
                    continue
            else:
                sources = [rule.get("remote_ip_prefix") or "0.0.0.0/0"]
            lines.append(f"-A {CHAIN} -s {','.join(sources)} -d {dest}{match} "
                         f"-m comment --comment \"rule {rule['id'][:8]}\" -j RETURN")
    lines += [f"-A {CHAIN} -j DROP", "COMMIT", ""]
    return "\n".join(lines)


def sync(cloud: Cloud) -> None:
    """Push the rules of every server whose rules changed since they were last pushed (call with the lock)."""
    for srv in list(cloud.data["servers"].values()):
        container = srv.get("container")
        if not container or srv.get("task_state") == "deleting":
            continue
        text = ruleset(cloud, srv)
        if cloud.firewalls.get(srv["id"]) == text:
            continue
        try:
            if cloud.backend.firewall(container, text):
                cloud.firewalls[srv["id"]] = text
        except Exception as exc:  # e.g. the host is rebooting: the next sync (or its boot) catches up
            log.warning("security groups of %s not applied: %s", srv["id"], exc)
    for server_id in set(cloud.firewalls) - set(cloud.data["servers"]):
        del cloud.firewalls[server_id]
