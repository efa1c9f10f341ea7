"""The Ansible inventory `cbm up` writes next to the spec (inventories/<name>/hosts.yml).

Groups: `manager` (the database/swarm manager host, reached on its floating IP) and `workers` (reached
on their private IP, jumping through the manager). Host keys are accepted on first contact and pinned
in the deployment's state folder; the private key stays there too (0600). Rewritten on every `up`.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from extractor.errors import CbmError
from provision import state


@dataclass(frozen=True)
class Host:
    name: str
    role: str            # manager | worker
    private_ip: str
    server_id: str


def ssh_options(spec) -> list[str]:
    """The ssh options every connection of the deployment uses (also for the jump to the manager)."""
    return ["-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={state.known_hosts_path(spec.name)}",
            "-o", "IdentitiesOnly=yes"]


def jump_command(spec, manager_ip: str) -> str:
    """ProxyCommand reaching a worker's private address through the manager's floating IP."""
    key = state.private_key_path(spec.name)
    parts = ["ssh", "-i", str(key), *ssh_options(spec), "-W", "%h:%p", f"{spec.ssh_user}@{manager_ip}"]
    return " ".join(shlex.quote(p) if p != "%h:%p" else p for p in parts)


def render(spec, hosts: list[Host], manager_ip: str, data_device: str | None, volume_id: str) -> dict:
    common = " ".join(shlex.quote(o) for o in ssh_options(spec))
    manager_hosts, worker_hosts = {}, {}
    manager_private = next((h.private_ip for h in hosts if h.role == "manager"), None)
    for host in hosts:
        entry = {"private_ip": host.private_ip, "cbm_server_id": host.server_id}
        if host.role == "manager":
            entry.update(ansible_host=manager_ip, ansible_ssh_common_args=common,
                         cbm_data_device=data_device, cbm_data_volume_id=volume_id)
            manager_hosts[host.name] = entry
        else:
            proxy = jump_command(spec, manager_ip)
            entry.update(ansible_host=host.private_ip,
                         ansible_ssh_common_args=f"{common} -o ProxyCommand={shlex.quote(proxy)}")
            worker_hosts[host.name] = entry
    return {"all": {
        "vars": {
            "ansible_user": spec.ssh_user,
            "ansible_ssh_private_key_file": str(state.private_key_path(spec.name)),
            "ansible_python_interpreter": "/usr/bin/python3",
            "cbm_deployment": spec.name,
            "cbm_spec": str(spec.path),
            "cbm_db_port": spec.db_port,
            "cbm_manager_public_ip": manager_ip,
            "cbm_manager_private_ip": manager_private,
            "cbm_extra_authorized_keys": list(spec.extra_authorized_keys),
        },
        "children": {
            "manager": {"hosts": manager_hosts},
            "workers": {"hosts": worker_hosts},
        },
    }}


def write(spec, hosts: list[Host], manager_ip: str, data_device: str | None, volume_id: str) -> Path:
    path = spec.inventory_path
    data = render(spec, hosts, manager_ip, data_device, volume_id)
    text = (f"# Written by `cbm up` for deployment {spec.name} from {spec.path.name}; rewritten on every up.\n"
            + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise CbmError(f"cannot write the inventory {path}: {exc.strerror}") from None
    return path


def load(path: str | Path) -> dict:
    """Read an inventory written by `write` (for other parts and tests)."""
    return yaml.safe_load(Path(path).read_text())
