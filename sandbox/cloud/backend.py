"""The real things behind the sandbox's API: Docker networks, host containers, loop-device volumes.

Every Docker object carries the labels `cbm-sandbox=1` and `cbm-sandbox.instance=<id>` so that one
sandbox only ever removes what it made (several sandboxes may share this Docker Engine).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import subprocess
from pathlib import Path

from extractor.errors import CbmError
from sandbox.cloud import hostimage

log = logging.getLogger(__name__)

SUBNET_POOL = ipaddress.ip_network("10.219.0.0/16")  # /24s handed to the sandbox's networks


def _run(cmd: list[str], check: bool = True, timeout: float = 300,
         input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise CbmError(f"{' '.join(cmd[:3])}: {err[-1] if err else 'exit ' + str(proc.returncode)}")
    return proc


class Backend:
    def __init__(self, instance: str, state_dir: Path):
        self.instance = instance
        self.state_dir = Path(state_dir)
        self.volume_dir = self.state_dir / "volumes"

    # -- labels and names ------------------------------------------------------------------
    @property
    def label_args(self) -> list[str]:
        return ["--label", f"{hostimage.LABEL}=1", "--label", f"{hostimage.LABEL}.instance={self.instance}"]

    def network_name(self, network_id: str) -> str:
        return f"cbm-sandbox-{self.instance}-net-{network_id[:8]}"

    def container_name(self, server_name: str, server_id: str) -> str:
        clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", server_name).strip("-.")[:30] or "server"
        return f"cbm-sandbox-{self.instance}-{clean}-{server_id[:8]}"

    # -- networks --------------------------------------------------------------------------
    def used_subnets(self) -> list[ipaddress.IPv4Network]:
        ids = _run(["docker", "network", "ls", "-q"]).stdout.split()
        if not ids:
            return []
        out = json.loads(_run(["docker", "network", "inspect", *ids]).stdout)
        nets = []
        for net in out:
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                try:
                    nets.append(ipaddress.ip_network(cfg.get("Subnet", ""), strict=False))
                except ValueError:
                    pass
        return nets

    def free_cidr(self, taken: set[str]) -> str:
        """A /24 of SUBNET_POOL that no Docker network uses and that is not in `taken`."""
        used = self.used_subnets()
        for candidate in SUBNET_POOL.subnets(new_prefix=24):
            if str(candidate) in taken:
                continue
            if not any(candidate.overlaps(u) for u in used if u.version == 4):
                return str(candidate)
        raise CbmError(f"no free /24 left in {SUBNET_POOL} for a sandbox network")

    def ensure_network(self, network_id: str, cidr: str, gateway: str) -> str:
        name = self.network_name(network_id)
        if _run(["docker", "network", "inspect", name], check=False).returncode == 0:
            return name
        _run(["docker", "network", "create", "--driver", "bridge", *self.label_args,
              "--label", f"{hostimage.LABEL}.network={network_id}",
              "--subnet", cidr, "--gateway", gateway, name])
        return name

    def remove_network(self, network_id: str) -> None:
        _run(["docker", "network", "rm", self.network_name(network_id)], check=False)

    # -- servers ---------------------------------------------------------------------------
    def boot(self, server_id: str, container: str, hostname: str, public_key: str,
             nics: list[tuple[str, str]], mounts: list[tuple[str, str, bool]], firewall: str) -> str:
        """Create and start a host container on nics [(docker network, ip), ...] with its security-group
        rules (applied by its init before any service starts); returns its id."""
        _run(["docker", "rm", "-fv", container], check=False)
        first_net, first_ip = nics[0]
        labels = {f"{hostimage.LABEL}.instance": self.instance, f"{hostimage.LABEL}.server": server_id}
        cid = hostimage.create_host(container, authorized_keys=public_key, network=first_net, ip=first_ip,
                                    hostname=hostname, labels=labels, mounts=mounts, start=False)
        hostimage.write_guest_file(cid, "firewall", firewall)
        for net, ip in nics[1:]:
            _run(["docker", "network", "connect", "--ip", ip, net, cid])
        _run(["docker", "start", cid])
        return cid

    def firewall(self, container: str, rules: str) -> bool:
        """Swap a host's security-group chain (running) or its boot copy (stopped); False if there is no
        such container."""
        state = self.container_state(container)
        if state == "running":
            _run(["docker", "exec", "-i", container, hostimage.GUEST_FIREWALL_PATH, "-"], input=rules, timeout=60)
        elif state is not None:
            hostimage.write_guest_file(container, "firewall", rules)
        return state is not None

    def container_state(self, container: str) -> str | None:
        proc = _run(["docker", "inspect", "--format", "{{.State.Status}}", container], check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def start(self, container: str) -> None:
        _run(["docker", "start", container])

    def stop(self, container: str) -> None:
        _run(["docker", "stop", container])

    def restart(self, container: str) -> None:
        _run(["docker", "restart", container])

    def remove_container(self, container: str) -> None:
        _run(["docker", "rm", "-fv", container], check=False)

    def connect(self, container: str, network: str, ip: str) -> None:
        _run(["docker", "network", "connect", "--ip", ip, network, container])

    def disconnect(self, container: str, network: str) -> None:
        _run(["docker", "network", "disconnect", "--force", network, container], check=False)

    # -- volumes ---------------------------------------------------------------------------
    def volume_path(self, volume_id: str) -> Path:
        return self.volume_dir / f"{volume_id}.img"

    def loop_of(self, path: Path) -> str | None:
        out = _run(["losetup", "-j", str(path), "-O", "NAME", "-n"], check=False).stdout.split()
        return out[0] if out else None

    def create_volume(self, volume_id: str, size_gb: int) -> tuple[str, int, int]:
        """A sparse file of size_gb GiB on a loop device; returns (loop device, major, minor)."""
        self.volume_dir.mkdir(parents=True, exist_ok=True)
        path = self.volume_path(volume_id)
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(size_gb * 1024 ** 3)
        return self.ensure_loop(volume_id)

    def ensure_loop(self, volume_id: str) -> tuple[str, int, int]:
        path = self.volume_path(volume_id)
        dev = self.loop_of(path) or _run(["losetup", "--find", "--show", str(path)]).stdout.strip()
        st = os.stat(dev)
        return dev, os.major(st.st_rdev), os.minor(st.st_rdev)

    def delete_volume(self, volume_id: str) -> None:
        path = self.volume_path(volume_id)
        while (dev := self.loop_of(path)) is not None:
            _run(["losetup", "-d", dev])
        path.unlink(missing_ok=True)

    def attach(self, container: str, device: str, major: int, minor: int, serial: str | None = None) -> None:
        """The volume's node at `device` and its /dev/disk/by-id link (`serial`: the volume id, as Nova)."""
        hostimage.add_block_device(container, device, major, minor, serial)

    def detach(self, container: str, device: str) -> None:
        hostimage.remove_block_device(container, device)

    # -- purge -----------------------------------------------------------------------------
    def purge(self) -> dict[str, int]:
        """Remove every container, network and loop device of this sandbox instance."""
        flt = f"label={hostimage.LABEL}.instance={self.instance}"
        containers = _run(["docker", "ps", "-aq", "--filter", flt]).stdout.split()
        if containers:
            _run(["docker", "rm", "-fv", *containers], check=False)
        networks = _run(["docker", "network", "ls", "-q", "--filter", flt]).stdout.split()
        for net in networks:
            _run(["docker", "network", "rm", net], check=False)
        loops = 0
        if self.volume_dir.is_dir():
            for img in self.volume_dir.glob("*.img"):
                while (dev := self.loop_of(img)) is not None:
                    _run(["losetup", "-d", dev])
                    loops += 1
                img.unlink()
            try:
                self.volume_dir.rmdir()
            except OSError:
                pass
        return {"containers": len(containers), "networks": len(networks), "loop devices": loops}
