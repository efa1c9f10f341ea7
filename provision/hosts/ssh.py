"""SSH chores outside playbooks, with fabric: wait until every host of an inventory answers, run a
command on one (fetch a log, read a state), run docker on one.

Hosts come from the inventory `cbm up` writes (provision/hosts/inventory.py): the manager is reached on
its floating IP, the workers on their private IP through the manager (a ProxyCommand in
`ansible_ssh_common_args`). The same options are used here, so what answers here answers Ansible.
"""

from __future__ import annotations

import logging
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fabric import Connection
from invoke.exceptions import UnexpectedExit
from paramiko.ssh_exception import AuthenticationException, SSHException

from extractor.errors import CbmError, one_line
from provision.hosts.inventory import InventoryHost

# paramiko logs every failed attempt with a traceback; the one-line errors below say what failed.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def connect(host: InventoryHost, timeout: float = 10, known_hosts: Path | None = None) -> Connection:
    """A fabric Connection with the inventory's key and jump; with `known_hosts`, host keys are pinned
    there (accepted on first contact, like the inventory's StrictHostKeyChecking=accept-new)."""
    kwargs = {"banner_timeout": timeout, "auth_timeout": timeout,
              "allow_agent": False, "look_for_keys": False}
    if host.key_file:
        kwargs["key_filename"] = [str(Path(host.key_file).expanduser())]
    gateway = None
    if host.proxy_command:
        gateway = (host.proxy_command.replace("%h", host.address).replace("%p", str(host.port))
                   .replace("%r", host.user))
    conn = Connection(host.address, user=host.user, port=host.port, gateway=gateway,
                      connect_timeout=timeout, connect_kwargs=kwargs)
    if known_hosts is not None:
        conn.client.load_host_keys(str(known_hosts))
    return conn


def run(host: InventoryHost, command: str, timeout: float = 60) -> str:
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


def wait_until_answers(host: InventoryHost, timeout: float) -> None:
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
    reason = one_line(last) if last else "no answer"
    if isinstance(last, socket.timeout | TimeoutError):
        reason = "timed out"
    raise CbmError(f"{host.where()}: no SSH answer within {timeout:.0f} s (waiting for SSH before "
                   f"configuring): {reason}")


def wait_for_hosts(hosts: list[InventoryHost], timeout: float, report=print) -> None:
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


def docker(conn: Connection, command: str, timeout: float = 30, merge_stderr: bool = False):
    """Run `docker <command>` on a host, with `sudo -n` when the SSH user is not in the docker group;
    the fabric Result (never raises on a non-zero exit: look at .ok)."""
    redirect = "2>&1" if merge_stderr else "2>/dev/null"
    line = f"docker {command}"
    return conn.run(f"{line} {redirect} || sudo -n {line}{' 2>&1' if merge_stderr else ''}", hide=True, warn=True,
                    in_stream=False, timeout=timeout)
