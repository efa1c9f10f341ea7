"""The sandbox cloud's servers are real hosts: SSH with the keypair, an attached volume that formats and
mounts, /eodata, the private network, reboots from inside and through Nova, a service restart, delete
and purge releasing containers, floating IPs and loop devices. The real openstacksdk drives it."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import wait_for
from sandbox.cloud import Sandbox
from sandbox.cloud.hostimage import wait_for_ssh

pytestmark = pytest.mark.docker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class Host:
    conn: object
    server: object
    volume: object
    key: Path
    ip: str
    names: dict

    def ssh(self, command: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o",
                               "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
                               "-o", "ConnectTimeout=5", f"eouser@{self.ip}", command],
                              capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
        return proc


@pytest.fixture(scope="module")
def host(sandbox, tmp_path_factory):
    conn = sandbox.connect()
    keydir = tmp_path_factory.mktemp("hostkey")
    key = keydir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    names = {k: unique(f"t-{k}") for k in ("kp", "sg", "vol", "srv")}
    conn.compute.create_keypair(name=names["kp"], public_key=key.with_suffix(".pub").read_text())
    sg = conn.network.create_security_group(name=names["sg"])
    conn.network.create_security_group_rule(security_group_id=sg.id, direction="ingress", ethertype="IPv4",
                                            protocol="tcp", port_range_min=22, port_range_max=22,
                                            remote_ip_prefix="0.0.0.0/0")
    volume = conn.create_volume(size=1, name=names["vol"], wait=True, timeout=60)
    server = conn.create_server(names["srv"], image="Ubuntu 22.04 LTS", flavor="eo1.xsmall",
                                key_name=names["kp"], network=["cbm-private", "eodata"],
                                security_groups=[names["sg"]], meta={"cbm-owner": "tests"},
                                wait=True, auto_ip=True, timeout=120)
    server = conn.get_server(server.id)
    wait_for_ssh(server.public_v4, timeout=60)
    conn.attach_volume(server, volume, wait=True, timeout=60)
    h = Host(conn, server, conn.block_storage.get_volume(volume.id), key, server.public_v4, names)
    yield h
    conn.delete_server(server.id, wait=True, delete_ips=True, timeout=120)
    if conn.block_storage.find_volume(volume.id):
        conn.delete_volume(volume.id, wait=True, timeout=60)
    conn.network.delete_security_group(sg, ignore_missing=True)
    conn.compute.delete_keypair(names["kp"], ignore_missing=True)


def test_ssh_with_the_keypair_as_eouser_with_sudo(host):
    out = host.ssh("id -un; sudo -n id -u; hostname; python3 -c 'print(42)'").stdout.split()
    assert out[0] == "eouser" and out[1] == "0" and out[3] == "42"
    assert host.server.status == "ACTIVE"
    assert host.server.private_v4 and host.server.public_v4 != host.server.private_v4
    floating = [a for addrs in host.server.addresses.values() for a in addrs if a["OS-EXT-IPS:type"] == "floating"]
    assert [a["addr"] for a in floating] == [host.ip]


def test_attached_volume_is_a_block_device_that_formats_and_mounts(host):
    assert host.volume.status == "in-use"
    device = host.volume.attachments[0]["device"]
    attachments = list(host.conn.compute.volume_attachments(host.server))
    assert [(a.volume_id, a.device) for a in attachments] == [(host.volume.id, device)]
    out = host.ssh(f"test -b {device} && sudo mkfs.ext4 -q {device} && sudo mkdir -p /data && "
                   f"echo \"UUID=$(sudo blkid -s UUID -o value {device}) /data ext4 defaults,nofail 0 2\" | "
                   "sudo tee -a /etc/fstab >/dev/null && sudo mount /data && echo kept | sudo tee /data/f && "
                   "findmnt -n -o SOURCE /data | tail -1").stdout.split()
    assert out == ["kept", device]


def test_eodata_folder_is_visible_read_only(sandbox, host):
    (sandbox.eodata / "Sentinel-2").mkdir(exist_ok=True)
    (sandbox.eodata / "Sentinel-2" / "scene.txt").write_text("S2A\n")
    assert host.ssh("cat /eodata/Sentinel-2/scene.txt").stdout == "S2A\n"
    assert host.ssh("sudo touch /eodata/x", check=False).returncode != 0


def test_servers_on_the_private_network_reach_each_other(host):
    conn = host.conn
    net = conn.network.find_network("cbm-private")
    other = conn.compute.create_server(name=unique("t-peer"), flavorRef=conn.compute.find_flavor("eo1.xsmall").id,
                                       imageRef=conn.image.find_image("Debian 12").id,
                                       networks=[{"uuid": net.id}], key_name=host.names["kp"],
                                       security_groups=[{"name": host.names["sg"]}])  # it allows SSH
    try:
        other = conn.compute.wait_for_server(other, interval=0.5, wait=120)
        peer_ip = other.addresses["cbm-private"][0]["addr"]
        probe = (f"python3 -c \"import socket; s=socket.create_connection(('{peer_ip}', 22), 5); "
                 "print(s.recv(4).decode())\"")
        assert wait_for(lambda: host.ssh(probe, check=False).stdout.strip() == "SSH-", "the peer's sshd", 90, 0.5)
    finally:
        conn.compute.delete_server(other)
        conn.compute.wait_for_delete(other, interval=0.5, wait=120)


def boot_id(host) -> str | None:
    proc = host.ssh("cat /proc/sys/kernel/random/boot_id", check=False, timeout=15)
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_reboot_from_inside_brings_back_ssh_ips_volume_and_mounts(host):
    before = boot_id(host)
    host.ssh("sudo shutdown -r 0 'Reboot initiated by a test'")
    after = wait_for(lambda: (b := boot_id(host)) and b != before and b, "the host to come back", 90, 0.5)
    assert after != before
    device = host.volume.attachments[0]["device"]
    assert host.ssh(f"test -b {device} && cat /data/f && findmnt -n -o SOURCE /data | tail -1").stdout.split() == \
        ["kept", device]
    # the volume's by-id name (virtio: the first 20 characters of its id) comes back too
    assert host.ssh(f"readlink -f /dev/disk/by-id/virtio-{host.volume.id[:20]}").stdout.strip() == device
    assert host.conn.get_server(host.server.id).public_v4 == host.ip


def test_nova_reboot_and_service_restart_keep_the_host(sandbox, host):
    before = boot_id(host)
    host.conn.compute.reboot_server(host.server, "HARD")
    wait_for(lambda: (b := boot_id(host)) and b != before, "the reboot", 90, 0.5)
    host.conn.compute.wait_for_server(host.conn.compute.get_server(host.server.id), interval=0.5, wait=60)
    sandbox.stop()
    assert host.ssh("cat /data/f").stdout == "kept\n"  # hosts keep running without the API
    sandbox.start()
    host.conn = sandbox.connect()
    assert host.conn.compute.get_server(host.server.id).status == "ACTIVE"
    assert host.conn.block_storage.get_volume(host.volume.id).status == "in-use"


def test_delete_releases_container_floating_ip_ports_and_loop_device(sandbox, host):
    conn, state = host.conn, sandbox.state()
    container = state["servers"][host.server.id]["container"]
    image = Path(sandbox.state_dir) / "volumes" / f"{host.volume.id}.img"
    assert losetup_of(image)
    conn.detach_volume(host.server, host.volume, wait=True, timeout=60)
    assert host.ssh(f"test -b {host.volume.attachments[0]['device']}", check=False).returncode != 0
    conn.delete_server(host.server.id, wait=True, delete_ips=True, timeout=120)
    assert subprocess.run(["docker", "inspect", container], capture_output=True).returncode != 0
    assert not list(conn.network.ips(floating_ip_address=host.ip))
    assert not list(conn.network.ports(device_id=host.server.id))
    conn.delete_volume(host.volume.id, wait=True, timeout=60)
    assert not image.exists() and not losetup_of(image)


def losetup_of(path: Path) -> list[str]:
    return subprocess.run(["losetup", "-j", str(path), "-O", "NAME", "-n"], capture_output=True,
                          text=True).stdout.split()


def test_stop_purge_removes_every_container_network_loop_device_and_file(tmp_path):
    sb = Sandbox(tmp_path / "purge").start()
    instance = sb.state()["instance"]
    try:
        conn = sb.connect()
        vol = conn.create_volume(size=1, name="p", wait=True, timeout=60)
        server = conn.create_server("p", image="Debian 12", flavor="eo1.xsmall", network="cbm-private",
                                    wait=True, auto_ip=True, timeout=120)
        conn.attach_volume(server, vol, wait=True, timeout=60)
        image = tmp_path / "purge" / "volumes" / f"{vol.id}.img"
        assert losetup_of(image)
        container = sb.state()["servers"][server.id]["container"]
        docker_volume = subprocess.run(
            ["docker", "inspect", "--format",
             '{{range .Mounts}}{{if eq .Destination "/var/lib/docker"}}{{.Name}}{{end}}{{end}}', container],
            capture_output=True, text=True, check=True).stdout.strip()
        assert docker_volume
    finally:
        removed = sb.stop(purge=True)
    label = f"label=cbm-sandbox.instance={instance}"
    assert removed["containers"] == 1 and removed["networks"] == 3
    assert subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout == ""
    assert subprocess.run(["docker", "network", "ls", "-q", "--filter", label], capture_output=True,
                          text=True).stdout == ""
    assert not losetup_of(image)
    assert not (tmp_path / "purge").exists()
    assert subprocess.run(["docker", "volume", "inspect", docker_volume], capture_output=True).returncode != 0
