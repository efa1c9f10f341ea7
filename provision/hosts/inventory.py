"""The Ansible inventory `cbm up` writes next to the spec (inventories/<name>/hosts.yml), and its one reader.

Groups: `manager` (the database/swarm manager host, reached on its floating IP) and `workers` (reached
on their private IP, jumping through the manager). Host keys are accepted on first contact and pinned
in the deployment's state folder; the private key stays there too (0600). Rewritten on every `up`.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from extractor.errors import CbmError, UserError
from provision.hosts.files import DeploymentFiles

GROUPS = ("manager", "workers")


@dataclass(frozen=True)
class InventoryHost:
    """A host as the inventory describes it (group and host variables merged)."""
    name: str             # inventory host name
    group: str            # manager | workers
    address: str          # ansible_host
    user: str
    key_file: str | None
    proxy_command: str | None = None
    port: int = 22
    vars: dict = field(default_factory=dict, compare=False, repr=False)

    def where(self) -> str:
        return f"{self.name} ({self.user}@{self.address})"


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: list[InventoryHost]

    @property
    def manager(self) -> InventoryHost:
        return next(h for h in self.hosts if h.group == "manager")

    def group(self, name: str) -> list[InventoryHost]:
        return [h for h in self.hosts if h.group == name]


# -- writing -----------------------------------------------------------------------------------
def ssh_options(files: DeploymentFiles) -> list[str]:
    """The ssh options every connection of the deployment uses (also for the jump to the manager)."""
    return ["-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={files.known_hosts}",
            "-o", "IdentitiesOnly=yes"]


def jump_command(spec, files: DeploymentFiles, manager_ip: str) -> str:
    """ProxyCommand reaching a worker's private address through the manager's floating IP."""
    parts = ["ssh", "-i", str(files.private_key), *ssh_options(files), "-W", "%h:%p", f"{spec.ssh_user}@{manager_ip}"]
    return " ".join(shlex.quote(p) if p != "%h:%p" else p for p in parts)


def render(spec, hosts: list, manager_ip: str, data_device: str | None, volume_id: str) -> dict:
    """The inventory of the hosts `cbm up` found (provision.cloud.reconcile.Host: name, role,
    private_ip, server_id)."""
    files = DeploymentFiles(spec.name)
    common = " ".join(shlex.quote(o) for o in ssh_options(files))
    manager_hosts, worker_hosts = {}, {}
    manager_private = next((h.private_ip for h in hosts if h.role == "manager"), None)
    for host in hosts:
        entry = {"private_ip": host.private_ip, "cbm_server_id": host.server_id}
        if host.role == "manager":
            # The role finds the volume's disk by its id (/dev/disk/by-id); the device name Nova reports
            # is only a hint that guests do not honour, kept for people reading the inventory.
            entry.update(ansible_host=manager_ip, ansible_ssh_common_args=common,
                         cbm_data_device=data_device, cbm_data_volume_id=volume_id,
                         cbm_data_volume_gb=spec.volume.size)
            manager_hosts[host.name] = entry
        else:
            proxy = jump_command(spec, files, manager_ip)
            entry.update(ansible_host=host.private_ip,
                         ansible_ssh_common_args=f"{common} -o ProxyCommand={shlex.quote(proxy)}")
            worker_hosts[host.name] = entry
    return {"all": {
        "vars": {
            "ansible_user": spec.ssh_user,
            "ansible_ssh_private_key_file": str(files.private_key),
            "ansible_python_interpreter": "/usr/bin/python3",
            "cbm_deployment": spec.name,
            "cbm_spec": str(spec.path),
            "cbm_db_port": spec.db_port,
            "cbm_manager_public_ip": manager_ip,
            "cbm_manager_private_ip": manager_private,
            "cbm_extra_authorized_keys": list(spec.extra_authorized_keys),
            # kept in authorized_keys by the base role, which allows exactly it and the extra keys
            "cbm_deployment_public_key": files.read_public_key(),
        },
        "children": {
            "manager": {"hosts": manager_hosts},
            "workers": {"hosts": worker_hosts},
        },
    }}


def write(spec, hosts: list, manager_ip: str, data_device: str | None, volume_id: str) -> Path:
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


# -- reading -----------------------------------------------------------------------------------
def read(spec) -> Inventory:
    """The inventory `cbm up` wrote for the spec; one-line UserError saying to run `cbm up` when it is
    missing, unreadable, or has no manager with an address."""
    path = spec.inventory_path
    rerun = f"run cbm up {spec.where}"
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"deployment {spec.name} has no inventory ({path}); {rerun} first") from None
    except yaml.YAMLError:
        raise UserError(f"{path}: the inventory is not valid YAML; {rerun} to rewrite it") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the inventory ({exc.strerror})") from None
    root = data.get("all") if isinstance(data, dict) else None
    if not isinstance(root, dict):
        raise UserError(f"{path}: not an inventory written by cbm up; {rerun} to rewrite it")
    top = root.get("vars") or {}
    children = root.get("children") or {}
    hosts = []
    for group in GROUPS:
        gdata = children.get(group) or {} if isinstance(children, dict) else {}
        gvars = {**top, **(gdata.get("vars") or {})}
        for name, hvars in (gdata.get("hosts") or {}).items():
            v = {**gvars, **(hvars or {})}
            if group == "manager" and not v.get("ansible_host"):
                continue
            hosts.append(InventoryHost(
                name=name, group=group, address=str(v.get("ansible_host") or name),
                user=str(v.get("ansible_user") or spec.ssh_user),
                key_file=v.get("ansible_ssh_private_key_file"),
                proxy_command=proxy_command(v.get("ansible_ssh_common_args") or ""),
                port=int(v.get("ansible_port") or 22), vars=v))
    if not any(h.group == "manager" for h in hosts):
        raise UserError(f"{path}: no manager host with an address; {rerun} first")
    return Inventory(path, hosts)


def proxy_command(common_args: str) -> str | None:
    """The ProxyCommand of ssh options such as `-o ProxyCommand='ssh -W %h:%p ...'`, if any."""
    words = shlex.split(common_args)
    for i, word in enumerate(words):
        option = word
        if word == "-o" and i + 1 < len(words):
            option = words[i + 1]
        elif word.startswith("-o"):
            option = word[2:]
        key, _, value = option.partition("=")
        if key.strip().lower() == "proxycommand" and value:
            return value
    return None
