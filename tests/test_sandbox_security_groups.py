"""The sandbox cloud enforces security groups on its servers as Neutron does: ingress by protocol, port and
remote CIDR or remote group, everything else dropped; a rule added or deleted, or a server joining or
leaving a group, changes what gets through without a restart. A port the server forwards (DNAT, as its
own dockerd does for `docker run -p`) is filtered by the port the client asked for.

Two small servers for the whole module: `one` (group A, a floating IP) and `two` (group B, private only)."""

from __future__ import annotations

import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import wait_for

pytestmark = pytest.mark.docker

PROBE = 1.5  # seconds: a dropped connection attempt ends here


@dataclass
class Pair:
    conn: object
    group_a: object
    group_b: object
    one: object
    two: object
    containers: dict
    fip: str
    key: Path

    @property
    def one_private(self) -> str:
        return self.one.addresses["cbm-private"][0]["addr"]


def reachable(address: str, port: int) -> bool:
    """A TCP connection from this machine gets through (closed = dropped or refused)."""
    try:
        with socket.create_connection((address, port), timeout=PROBE):
            return True
    except OSError:
        return False


def reachable_from(container: str, address: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(('{address}', {port}), {PROBE})"
    return subprocess.run(["docker", "exec", container, "python3", "-c", code], capture_output=True,
                          timeout=30).returncode == 0


def ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=PROBE) as s:
            s.settimeout(PROBE)
            return s.recv(4) == b"SSH-"
    except OSError:
        return False


def source_address(destination: str) -> str:
    """The address this machine sends from to `destination` (what the server sees)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((destination, 9))
        return s.getsockname()[0]


def in_host(container: str, command: str) -> None:
    subprocess.run(["docker", "exec", container, "sh", "-c", command], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pair(sandbox, tmp_path_factory):
    conn = sandbox.connect()
    tag = uuid.uuid4().hex[:6]
    key = tmp_path_factory.mktemp("sgkey") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    conn.compute.create_keypair(name=f"sg-{tag}", public_key=key.with_suffix(".pub").read_text())
    group_a = conn.network.create_security_group(name=f"sg-a-{tag}")
    group_b = conn.network.create_security_group(name=f"sg-b-{tag}")
    for rule in (dict(port=22, remote_ip_prefix="192.0.2.0/24"), dict(port=8000, remote_group_id=group_a.id)):
        port = rule.pop("port")
        conn.network.create_security_group_rule(security_group_id=group_a.id, direction="ingress", ethertype="IPv4",
                                                protocol="tcp", port_range_min=port, port_range_max=port, **rule)
    flavor, image = conn.compute.find_flavor("eo1.xsmall").id, conn.image.find_image("Debian 12").id
    net = conn.network.find_network("cbm-private")
    servers = [conn.compute.create_server(name=f"sg-{n}-{tag}", flavorRef=flavor, imageRef=image, key_name=f"sg-{tag}",
                                          networks=[{"uuid": net.id}], security_groups=[{"name": g.id}])
               for n, g in (("one", group_a), ("two", group_b))]
    fip = None
    try:
        one, two = (conn.compute.wait_for_server(s, interval=0.5, wait=120) for s in servers)
        fip = conn.network.create_ip(floating_network_id=conn.network.find_network("external").id,
                                     port_id=next(conn.network.ports(device_id=one.id)).id)
        one = conn.compute.get_server(one.id)
        state = sandbox.state()["servers"]
        containers = {"one": state[one.id]["container"], "two": state[two.id]["container"]}
        subprocess.run(["docker", "exec", "-d", containers["one"], "python3", "-m", "http.server", "8000"], check=True)
        for name, port in (("one", 22), ("one", 8000), ("two", 22)):
            wait_for(lambda: reachable_from(containers[name], "127.0.0.1", port), f"{name} listening on {port}", 60)
        yield Pair(conn, group_a, group_b, one, two, containers, fip.floating_ip_address, key)
    finally:
        for s in servers:
            conn.compute.delete_server(s, ignore_missing=True)
        for s in servers:
            conn.compute.wait_for_delete(s, interval=0.5, wait=120)
        if fip is not None:
            conn.network.delete_ip(fip, ignore_missing=True)
        for g in (group_a, group_b):
            conn.network.delete_security_group(g, ignore_missing=True)
        conn.compute.delete_keypair(f"sg-{tag}", ignore_missing=True)


def add_rule(pair: Pair, port: int, **remote):
    return pair.conn.network.create_security_group_rule(
        security_group_id=pair.group_a.id, direction="ingress", ethertype="IPv4", protocol="tcp",
        port_range_min=port, port_range_max=port, **remote)


def test_ssh_is_closed_to_an_address_the_group_does_not_allow_and_opens_with_a_rule(pair):
    me = source_address(pair.fip)
    assert not ssh_banner(pair.fip)  # group A allows SSH from 192.0.2.0/24 only; sshd listens (fixture)
    rule = add_rule(pair, 22, remote_ip_prefix=f"{me}/32")
    wait_for(lambda: ssh_banner(pair.fip), "SSH open to this machine", 30)
    out = subprocess.run(["ssh", "-i", str(pair.key), "-o", "StrictHostKeyChecking=no", "-o",
                          "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o",
                          "ConnectTimeout=5", f"eouser@{pair.fip}", "echo $SSH_CLIENT"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.split()[:1] == [me], out  # the server sees this machine's address on the external network
    pair.conn.network.delete_security_group_rule(rule)
    wait_for(lambda: not ssh_banner(pair.fip), "SSH closed again", 30)
    assert not reachable(pair.one_private, 22)  # nor through the private network (another source address)


def test_a_forwarded_port_is_filtered_by_the_port_the_client_asked_for(pair):
    # What the server's dockerd does for `docker run -p 8080:8000`: a DNAT in its nat table.
    in_host(pair.containers["one"], f"iptables -t nat -A PREROUTING -p tcp --dport 8080 -j DNAT "
                                    f"--to-destination {pair.one_private}:8000")
    me = f"{source_address(pair.fip)}/32"
    inner = add_rule(pair, 8000, remote_ip_prefix=me)
    try:
        wait_for(lambda: reachable(pair.fip, 8000), "port 8000 open to this machine", 30)
        assert not reachable(pair.fip, 8080)  # its DNAT target is allowed, the published port is not
        outer = add_rule(pair, 8080, remote_ip_prefix=me)
        wait_for(lambda: reachable(pair.fip, 8080), "port 8080 open to this machine", 30)
        pair.conn.network.delete_security_group_rule(outer)
        wait_for(lambda: not reachable(pair.fip, 8080), "port 8080 closed again", 30)
    finally:
        pair.conn.network.delete_security_group_rule(inner)
    wait_for(lambda: not reachable(pair.fip, 8000), "port 8000 closed again", 30)


def test_a_remote_group_rule_admits_the_members_of_the_group_only(pair):
    one, two = pair.one_private, pair.containers["two"]
    assert not reachable_from(two, one, 8000)  # `two` is in group B, the rule admits members of A
    assert not reachable(one, 8000)            # nor this machine
    pair.conn.compute.add_security_group_to_server(pair.two, pair.group_a)
    wait_for(lambda: reachable_from(two, one, 8000), "port 8000 open to a member of the group", 30)
    assert not reachable_from(two, one, 22)    # only the port of the rule
    pair.conn.compute.remove_security_group_from_server(pair.two, pair.group_a)
    wait_for(lambda: not reachable_from(two, one, 8000), "port 8000 closed to a server that left the group", 30)
