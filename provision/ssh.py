"""SSH chores outside playbooks, with fabric: wait until every host of an inventory answers, run a
command on one (fetch a log, read a state).

Hosts come from the inventory `cbm up` writes (provision/inventory.py): the manager is reached on
its floating IP, the workers on their private IP through the manager (a ProxyCommand in
`ansible_ssh_common_args`). The same options are used here, so what answers here answers Ansible.
"""

from __future__ import annotations

import logging
import shlex
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from fabric import Connection
from invoke.exceptions import UnexpectedExit
from paramiko.ssh_exception import AuthenticationException, SSHException

from extractor.errors import CbmError, UserError

GROUPS = ("manager", "workers")
# paramiko logs every failed attempt with a traceback; the one-line errors below say what failed.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class SshHost:
    name: str             # inventory host name
    group: str            # manager | workers
    address: str          # ansible_host
    user: str
    key_file: str | None
    proxy_command: str | None = None
    port: int = 22

    def where(self) -> str:
        return f"{self.name} ({self.user}@{self.address})"


def read_inventory(path: Path) -> list[SshHost]:
    """The hosts of an inventory in the `cbm up` format (groups manager and workers)."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"{path}: no inventory; run `cbm up` on the spec first (it writes this file)") from None
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the inventory: {exc}") from None
    root = data.get("all", data) if isinstance(data, dict) else {}
    top = root.get("vars") or {}
    children = root.get("children") or {}
    hosts = []
    for group in GROUPS:
        gdata = children.get(group) or {}
        gvars = {**top, **(gdata.get("vars") or {})}
        for name, hvars in (gdata.get("hosts") or {}).items():
            v = {**gvars, **(hvars or {})}
            hosts.append(SshHost(
                name=name, group=group, address=str(v.get("ansible_host") or name),
                user=str(v.get("ansible_user") or "root"),
                key_file=v.get("ansible_ssh_private_key_file"),
                proxy_command=proxy_command(v.get("ansible_ssh_common_args") or ""),
                port=int(v.get("ansible_port") or 22)))
    if not any(h.group == "manager" for h in hosts):
        raise UserError(f"{path}: the inventory has no host in group 'manager'; run `cbm up` on the spec again")
    return hosts


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


def connect(host: SshHost, timeout: float = 10) -> Connection:
    kwargs = {"banner_timeout": timeout, "auth_timeout": timeout,
              "allow_agent": False, "look_for_keys": False}
    if host.key_file:
        kwargs["key_filename"] = [str(Path(host.key_file).expanduser())]
    gateway = None
    if host.proxy_command:
        gateway = (host.proxy_command.replace("%h", host.address).replace("%p", str(host.port))
                   .replace("%r", host.user))
    return Connection(host.address, user=host.user, port=host.port, gateway=gateway,
                      connect_timeout=timeout, connect_kwargs=kwargs)


def run(host: SshHost, command: str, timeout: float = 60) -> str:
    """Run a command on a host; its stdout. CbmError naming the host when it fails."""
    with connect(host) as conn:
        try:
            result = conn.run(command, hide=True, warn=True, timeout=timeout)
        except (OSError, SSHException) as exc:
            raise CbmError(f"{host.where()}: {command!r} failed: {exc}") from None
    if result.exited != 0:
        last = (result.stderr.strip().splitlines() or [f"exit {result.exited}"])[-1]
        raise CbmError(f"{host.where()}: {command!r} failed: {last}")
    return result.stdout


def wait_until_answers(host: SshHost, timeout: float) -> None:
    """Poll until `true` runs on the host over SSH; a one-line CbmError naming it when it does not."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            with connect(host, timeout=min(10.0, max(2.0, deadline - time.monotonic()))) as conn:
                conn.run("true", hide=True)
            return
        except AuthenticationException as exc:
            last = exc      # keys may be installed a moment after sshd starts (cloud-init)
        except (OSError, SSHException, EOFError, UnexpectedExit) as exc:
            last = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(2)
    if isinstance(last, AuthenticationException):
        raise CbmError(f"{host.where()}: SSH refused the key {host.key_file} (waiting for SSH before "
                       f"configuring): is it the deployment's key? (see ansible_ssh_private_key_file)")
    reason = " ".join(str(last).split()) if last else "no answer"
    if isinstance(last, socket.timeout | TimeoutError):
        reason = "timed out"
    raise CbmError(f"{host.where()}: no SSH answer within {timeout:.0f} s (waiting for SSH before "
                   f"configuring): {reason}")


def wait_for_hosts(hosts: list[SshHost], timeout: float, report=print) -> None:
    """Wait until every host answers SSH (in parallel); the first failure is raised."""
    report(f"waiting for SSH on {len(hosts)} host(s) (up to {timeout:.0f} s)")
    # The manager first: the workers are reached through it.
    managers = [h for h in hosts if h.group == "manager"]
    others = [h for h in hosts if h.group != "manager"]
    for batch in (managers, others):
        if not batch:
            continue
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            futures = [pool.submit(wait_until_answers, h, timeout) for h in batch]
            for future in futures:
                future.result()
