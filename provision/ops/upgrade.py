"""Rolling upgrade of a deployment (`cbm upgrade SPEC [--batch N] [--check] [--no-backup] [--yes]`).

    1. the database is backed up to the controller (`cbm db backup SPEC`: pg_dump -Fc into
       <state folder>/backups/), unless --no-backup (or --check);
    2. playbooks/upgrade.yml (roles/node_upgrade), through the ansible-runner driver
       (provision.ops.configure.run): the manager alone (apt upgrade, docker.io, reboot when
       /var/run/reboot-required, wait for Docker, PostGIS healthy and the node ready), then the workers
       in batches of N (default 1): drain, wait until its swarm tasks have moved, upgrade, reboot when
       required, wait until ready, set active again. The first host that fails stops the rolling upgrade
       (max_fail_percentage 0); a failed node is set active again, or the run says it is LEFT DRAINED;
    3. the swarm's nodes are read from the manager and printed; a node that was active before and is not
       active afterwards is named on the terminal and makes the exit code non-zero, whatever the
       playbook reported (e.g. a host that became unreachable mid-upgrade, where Ansible runs nothing more).

Exit codes: 0 every host upgraded and every node as active as before; 2 a host failed (ansible's code);
4 a host unreachable; 1 any other failure, including a node left drained after a successful run.
"""

from __future__ import annotations

import json
import sys

from extractor.errors import CbmError, UserError, one_line
from provision.ops import backup as db_backup
from provision.ops import configure, deployment
from provision.ops.status import swarm_nodes

PLAYBOOK = "upgrade.yml"
# The role's last task, whose message sums up each upgraded host.
REPORT_TASK = "Report the upgrade of the node"


def check_batch(batch: int, workers: int) -> None:
    if batch < 1:
        raise UserError(f"--batch {batch}: give a number of workers of at least 1")
    if workers > 1 and batch >= workers:
        raise UserError(f"--batch {batch} would drain all {workers} workers at once and stop the extraction; "
                        f"give at most {workers - 1}")


def read_nodes(dep) -> tuple[dict[str, dict], str | None]:
    """({hostname: docker node ls row}, None) or ({}, why the swarm could not be read)."""
    try:
        return {n.get("Hostname", n.get("ID", "?")): n for n in swarm_nodes(dep)}, None
    except CbmError as exc:
        return {}, str(exc)
    except Exception as exc:  # SSH errors of fabric/paramiko: the manager may be down after a failure
        return {}, one_line(f"{type(exc).__name__}: {exc}", 300)


def left_drained(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """Nodes active before the upgrade that are not active after it."""
    return sorted(name for name, node in before.items()
                  if node.get("Availability", "").lower() == "active"
                  and (after.get(name) or {}).get("Availability", "").lower() != "active")


def print_nodes(before: dict[str, dict], after: dict[str, dict], out) -> None:
    print("swarm nodes after the upgrade:", file=out)
    width = max((len(n) for n in after), default=4)
    for name in sorted(after):
        node, old = after[name], before.get(name) or {}
        was = old.get("Availability", "")
        change = f" (was {was})" if was and was != node.get("Availability") else ""
        print(f"  {name:<{width}}  {node.get('Status', '?'):<8} {node.get('Availability', '?')}{change}  "
              f"engine {node.get('EngineVersion', '?')}", file=out)


def node_reports(files) -> list[str]:
    """The per-host lines of the role's last task ("<host> upgraded: ...") from the newest run's events."""
    runs = sorted((files.root / "runs").glob("*/artifacts/*/job_events"))
    if not runs:
        return []
    lines = []
    for path in sorted(runs[-1].glob("*.json"), key=lambda p: int(p.name.split("-", 1)[0])):
        try:
            event = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data = event.get("event_data") or {}
        if event.get("event") == "runner_on_ok" and data.get("task") == REPORT_TASK:
            msg = (data.get("res") or {}).get("msg")
            if msg:
                lines.append(one_line(msg))
    return lines


def upgrade(spec_path: str, batch: int = 1, check: bool = False, backup: bool = True, confirm=None,
            config: str | None = None, out=None) -> int:
    """Run the rolling upgrade; `confirm(question) -> bool` is asked first unless None (--yes) or check."""
    out = out or sys.stdout
    dep = deployment.load(spec_path)
    spec = dep.spec
    workers = [h.name for h in dep.inventory.group("workers")]
    managers = [h.name for h in dep.inventory.group("manager")]
    check_batch(batch, len(workers))
    if not check and confirm is not None and not confirm(
            f"Upgrade deployment {spec.name}: {'back up the database, ' if backup else ''}upgrade and reboot "
            f"(when required) the manager {', '.join(managers)}, then {len(workers)} worker(s) {batch} at a time?"):
        raise UserError("upgrade: cancelled, nothing was changed")

    before, why = read_nodes(dep)
    if why:
        raise CbmError(f"upgrade of {spec.name} not started: cannot read the swarm's nodes: {why}")
    if backup and not check:
        dump, facts = db_backup.run_backup(spec_path, config=config)
        print(db_backup.summary(dump, facts), file=out, flush=True)
    elif not check:
        print("database backup skipped (--no-backup)", file=out, flush=True)

    failure: CbmError | None = None
    try:
        configure.run(spec, PLAYBOOK, extravars={"cbm_upgrade_batch": batch}, check=check, out=out,
                      verb="upgrading with")
    except CbmError as exc:
        failure = exc

    after, why = read_nodes(dep)
    if why:
        raise _after(failure, f"upgrade of {spec.name}: cannot read the swarm's nodes afterwards ({why}); check on "
                              f"the manager with `docker node ls` that no node is left drained")
    for line in node_reports(dep.files):
        print(line, file=out)
    print_nodes(before, after, out)
    drained = left_drained(before, after)
    if drained:
        names = ", ".join(f"{n} ({(after.get(n) or {}).get('Availability', 'missing')})" for n in drained)
        ids = " ".join((after.get(n) or before[n]).get("ID", n) for n in drained)
        raise _after(failure, f"upgrade of {spec.name}: LEFT DRAINED: {names}; on the manager run "
                              f"`docker node update --availability active <id>` for {ids}")
    if failure:
        raise failure
    if check:
        print(f"check mode: nothing was changed on {spec.name} (run without --check to upgrade)", file=out)
    else:
        print(f"upgrade of {spec.name} finished: {len(managers) + len(workers)} host(s) upgraded, "
              f"every node as active as before", file=out)
    return 0


def _after(failure: CbmError | None, msg: str) -> CbmError:
    """What went wrong after the playbook, joined to the playbook's own failure (its exit code kept)."""
    err = CbmError(f"{failure}; {msg}" if failure else msg)
    err.exit_code = getattr(failure, "exit_code", 1) or 1
    return err
