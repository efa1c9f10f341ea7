"""What `cbm status [SPEC]` reports: one look at a deployment, a part per topic.

    hosts        the deployment's servers, volume and floating IP, from the cloud (openstacksdk; SPEC only)
    swarm        `docker node ls` on the manager over SSH (fabric; SPEC only; skipped with a note if unreachable)
    database     PostGIS up, versions, size
    catalog      scenes by card and status (the seed's query, extractor.catalog.status_counts)
    extraction   per card and run (resolution): done / failed / running / left, rows, scenes per hour over the
                 last hour, ETA (from extraction_runs)
    schedule     the continuous mode (cbm schedule): its cards and period, the next run, the last run with
                 its outcome, counts and log on the manager

Without SPEC only the database of the normal settings is reported. A part that cannot be reached is a
note under the tables and makes the exit code 1; 0 means every part answered.
The tables and the plot are drawn by the command (cbm/commands/status.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from extractor import catalog, db, progress, schedule
from extractor import settings as settings_mod
from extractor.errors import CbmError, UserError, one_line
from provision.cloud import connection, ownership
from provision.cloud import spec as specs
from provision.hosts import ssh
from provision.ops import deployment


# -- gathering --------------------------------------------------------------------------------
@dataclass
class Report:
    title: str
    hosts: list[dict] | None = None
    swarm: list[dict] | None = None
    database: dict | None = None
    catalog: list[tuple] | None = None
    progress: list[dict] | None = None
    timeline: list[tuple] | None = None
    schedule: dict | None = None      # the continuous mode: {schedule, last} (extractor/schedule)
    notes: list[str] = field(default_factory=list)


def cloud_hosts(spec) -> list[dict]:
    """Servers, the volume and floating IPs of the deployment (found by ownership tags)."""
    conn = connection.connect(spec)
    try:
        found = ownership.find(conn, spec, public_key=None)   # the keypair is not shown here
    finally:
        conn.close()
    rows = []
    for server in found.servers():
        meta = server.metadata or {}
        per_net = []
        for net, addrs in sorted((server.addresses or {}).items()):
            shown = [f"{a.get('addr')}{' (floating)' if a.get('OS-EXT-IPS:type') == 'floating' else ''}"
                     for a in addrs or []]
            per_net.append(f"{net}: {', '.join(shown)}")
        rows.append({"kind": "server", "name": server.name, "role": meta.get("cbm-role", "?"),
                     "status": server.status, "detail": "; ".join(per_net)})
    for vol in found.volumes:
        attached = ", ".join(a.get("server_id", "")[:8] + ":" + str(a.get("device", ""))
                             for a in (vol.attachments or []))
        rows.append({"kind": "volume", "name": vol.name, "role": "data", "status": vol.status,
                     "detail": f"{vol.size} GB{', attached ' + attached if attached else ''}"})
    for ip in found.floating_ips:
        rows.append({"kind": "floating IP", "name": ip.floating_ip_address, "role": "manager",
                     "status": ip.status, "detail": f"fixed {ip.fixed_ip_address or '-'}"})
    return rows


def swarm_nodes(dep, timeout: float = 10) -> list[dict]:
    """`docker node ls` on the manager."""
    conn = dep.manager_ssh(timeout)
    try:
        result = ssh.docker(conn, "node ls --format '{{json .}}'", timeout=timeout * 3)
    finally:
        conn.close()
    if not result.ok:
        reason = one_line(result.stderr or result.stdout or f"exit {result.exited}", 200)
        raise CbmError(f"docker node ls on {dep.manager_host} failed: {reason} "
                       f"(is the swarm set up? cbm configure {dep.spec.where})")
    nodes = []
    for line in result.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            nodes.append(json.loads(line))
    return nodes


def database_part(report: Report, settings, with_timeline: bool) -> None:
    conn = db.connect(settings)  # one-line CbmError when down
    try:
        report.database = db.server_facts(conn)
        report.database["where"] = deployment.describe(settings)
        if db.table_exists(conn, settings, settings.tables.catalogue):
            report.catalog = [(c.strip(), s, n) for c, s, n in catalog.status_counts(conn, settings)]
            report.progress = progress.extraction_progress(conn, settings)
            report.schedule = schedule.status_of(conn, settings)
            if with_timeline:
                report.timeline = progress.extraction_timeline(conn, settings)
        else:
            report.notes.append(f"catalog: no table {settings.tables.catalogue} in {deployment.describe(settings)}; "
                                "run cbm db init")
    finally:
        conn.close()


def gather(spec_path: str | None, config: str | None, with_timeline: bool = False) -> tuple[Report, bool]:
    """The report and whether every part answered."""
    ok = True
    if not spec_path:
        report = Report(title="database of the settings")
        database_part(report, settings_mod.load(config), with_timeline)  # the only part: errors propagate
        return report, ok

    spec = specs.load(spec_path)
    report = Report(title=f"deployment {spec.name}")
    try:
        report.hosts = cloud_hosts(spec)
    except UserError:
        raise  # a bad spec or clouds.yaml: the user must fix it
    except CbmError as exc:
        report.notes.append(f"hosts: {exc}")
        ok = False
    try:
        dep = deployment.load(spec_path)
    except UserError as exc:
        report.notes.append(f"swarm and database: {exc}")
        return report, False
    try:
        report.swarm = swarm_nodes(dep)
    except CbmError as exc:  # SSH worked, docker did not answer
        report.notes.append(f"swarm: {exc}")
        ok = False
    except Exception as exc:  # noqa: BLE001 - any SSH failure is a note, never a traceback
        reason = one_line(exc, 200) or type(exc).__name__
        report.notes.append(f"swarm: skipped, the manager {dep.manager_host} is unreachable over SSH ({reason})")
        ok = False
    try:
        database_part(report, deployment.deployment_settings(spec_path, config), with_timeline)
    except CbmError as exc:
        report.notes.append(f"database: {exc}")
        ok = False
    return report, ok
