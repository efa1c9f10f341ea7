"""`cbm upgrade` (playbooks/upgrade.yml, roles/node_upgrade) on the shared live sandbox deployment
(1 manager + 2 workers, provisioned and configured once per session: `live_deployment`).

A replicated service with a task on each worker runs through every upgrade; a monitor polls the
manager during the upgrade and records, at each sample, which workers are active and how many of the
service's tasks run. Nothing is mocked: apt talks to deb.debian.org, the reboot restarts the host.
"""

from __future__ import annotations

import re
import stat
import threading

import pytest

from conftest import assert_one_line_error, run_cbm, wait_for

pytestmark = pytest.mark.docker

SERVICE = "cbm-upgrade-test"
IMAGE = "cbm-upgrade-test/sleeper:1"
BROKEN_LIST = "/etc/apt/sources.list.d/cbm-upgrade-test-broken.list"
NODES = "sudo docker node ls --format '{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}'"
TASKS = f"sudo docker service ps {SERVICE} --filter desired-state=running --format '{{{{.Node}}}} {{{{.CurrentState}}}}'"


def nodes(dep) -> dict[str, tuple[str, str]]:
    """{hostname: (status, availability)} of the swarm's nodes, read on the manager."""
    rows = [line.split() for line in dep.ssh("manager", 0, NODES).splitlines() if line.strip()]
    return {r[0]: (r[1], r[2]) for r in rows}


def worker_names(dep) -> list[str]:
    return sorted(dep.hosts["children"]["workers"]["hosts"])


def running_tasks(dep) -> list[str]:
    out = dep.ssh("manager", 0, TASKS, check=False)
    return [line.split()[0] for line in out.splitlines() if " Running " in f" {line} "]


class Monitor(threading.Thread):
    """Samples the swarm on the manager while an upgrade runs: (active workers, running tasks).
    Samples the manager cannot answer (its own upgrade, its reboot) are counted as gaps."""

    def __init__(self, dep):
        super().__init__(daemon=True)
        self.dep, self.workers = dep, set(worker_names(dep))
        self.samples: list[tuple[set[str], int]] = []
        self.gaps = 0
        self.stop = threading.Event()

    def run(self):
        script = f"{NODES} && echo --- && {TASKS}"
        while not self.stop.is_set():
            out = self.dep.ssh("manager", 0, script, check=False)
            if "---" not in out:
                self.gaps += 1
            else:
                node_part, task_part = out.split("---", 1)
                active = {r.split()[0] for r in node_part.splitlines()
                          if r.strip() and r.split()[0] in self.workers and r.split()[2] == "Active"}
                tasks = sum(1 for r in task_part.splitlines() if " Running " in f" {r} ")
                self.samples.append((active, tasks))
            self.stop.wait(0.5)


@pytest.fixture(scope="module")
def dep(live_deployment):
    """The live deployment with a 2-replica service spread over the workers (a tiny image made on
    each worker from its own files: nothing is pulled)."""
    dep = live_deployment
    for i in range(len(worker_names(dep))):
        dep.ssh("workers", i, f"sudo docker image inspect {IMAGE} >/dev/null 2>&1 || sudo tar -C / -chf - "
                              "usr/bin/sleep lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2 "
                              f"| sudo docker import - {IMAGE} >/dev/null")
    dep.ssh("manager", 0, f"sudo docker service create -d --name {SERVICE} --replicas 2 --no-resolve-image "
                          "--constraint node.labels.cbm.role==worker --placement-pref spread=node.id "
                          f"--stop-grace-period 1s {IMAGE} /usr/bin/sleep infinity >/dev/null")
    wait_for(lambda: sorted(running_tasks(dep)) == worker_names(dep), "the service runs a task on each worker", 120,
             interval=1)
    yield dep
    for i in range(len(worker_names(dep))):
        dep.ssh("workers", i, f"sudo rm -f {BROKEN_LIST}", check=False)
    dep.ssh("manager", 0, f"sudo docker service rm {SERVICE}", check=False)


def upgrade(dep, *args: str):
    # stdin is a pipe, not a terminal (as in a script).
    return run_cbm("upgrade", str(dep.spec), *args, env=dep.env, input="", timeout=2400)


# -- bad input: one line, nothing touched ---------------------------------------------------
def test_bad_batch_and_missing_confirmation(dep):
    assert_one_line_error(upgrade(dep, "--batch", "0", "--yes"), "--batch 0", code=2)
    assert_one_line_error(upgrade(dep, "--batch", "2", "--yes"), "--batch 2", "all 2 workers", code=2)
    # No terminal and no --yes: refused before anything happens.
    assert_one_line_error(upgrade(dep), "--yes", code=2)
    assert set(a for _, a in nodes(dep).values()) == {"Active"}


# -- check mode: reports, changes nothing ------------------------------------------------------
def test_check_mode_changes_nothing(dep):
    first = worker_names(dep)[0]
    dep.ssh("workers", 0, "sudo touch /var/run/reboot-required")
    boot = dep.ssh("workers", 0, "cat /proc/sys/kernel/random/boot_id")
    backups = set((dep.state / "backups").glob("*.dump"))

    proc = upgrade(dep, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert "node_upgrade : Drain the node" in proc.stdout and "would change" in proc.stdout
    assert "check mode: nothing was changed" in proc.stdout
    assert set((dep.state / "backups").glob("*.dump")) == backups, "check mode made a backup"
    assert dep.ssh("workers", 0, "cat /proc/sys/kernel/random/boot_id") == boot, f"check mode rebooted {first}"
    assert all(v == ("Ready", "Active") for v in nodes(dep).values()), nodes(dep)
    assert sorted(running_tasks(dep)) == worker_names(dep)


# -- the rolling upgrade ------------------------------------------------------------------------
def test_rolling_upgrade_keeps_the_service_running(dep):
    workers = worker_names(dep)
    dep.ssh("workers", 0, "sudo touch /var/run/reboot-required")
    boots = [dep.ssh("workers", i, "cat /proc/sys/kernel/random/boot_id").strip() for i in range(len(workers))]
    backups = set((dep.state / "backups").glob("*.dump"))

    monitor = Monitor(dep)
    monitor.start()
    try:
        proc = upgrade(dep, "--yes")
    finally:
        monitor.stop.set()
        monitor.join(60)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr

    # The database was backed up first: a new pg_dump custom-format archive, 0600, in the state folder.
    new = set((dep.state / "backups").glob("*.dump")) - backups
    assert len(new) == 1, proc.stdout
    dump = new.pop()
    assert dump.read_bytes()[:5] == b"PGDMP" and stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert proc.stdout.index("backup:") < proc.stdout.index("PLAY Upgrade the manager")

    # Every node Ready and Active; the worker that needed a reboot rebooted, the other did not.
    assert all(v == ("Ready", "Active") for v in nodes(dep).values()), nodes(dep)
    after = [dep.ssh("workers", i, "cat /proc/sys/kernel/random/boot_id").strip() for i in range(len(workers))]
    assert after[0] != boots[0], f"{workers[0]} had /var/run/reboot-required but did not reboot"
    assert after[1] == boots[1], f"{workers[1]} rebooted without being asked to"
    assert dep.ssh("workers", 0, "ls /var/run/reboot-required", check=False).strip() == ""
    reports = {line.split()[0]: line for line in proc.stdout.splitlines() if " upgraded: " in line}
    assert set(reports) == set(workers) | set(dep.hosts["children"]["manager"]["hosts"]), proc.stdout
    assert ", rebooted, active again" in reports[workers[0]] and "no reboot" in reports[workers[1]], reports
    assert "every node as active as before" in proc.stdout

    # While it ran, each worker was drained in turn, never both, and the service kept running tasks.
    print(f"\nmonitor: {len(monitor.samples)} samples, {monitor.gaps} gaps (manager busy)")
    assert len(monitor.samples) >= 10, (len(monitor.samples), monitor.gaps)
    drained = {w for active, _ in monitor.samples for w in set(workers) - active}
    assert drained == set(workers), f"not every worker was seen drained: {drained}"
    assert min(len(active) for active, _ in monitor.samples) >= 1, "all workers were drained at once"
    assert min(tasks for _, tasks in monitor.samples) >= 1, "the service had no running task at some point"
    wait_for(lambda: len(running_tasks(dep)) == 2, "the service runs its 2 replicas again", 120, interval=1)


def test_a_failing_node_is_reported_and_left_active(dep):
    workers = worker_names(dep)
    dep.ssh("workers", 0, f"echo 'deb http://127.0.0.1:9/broken bookworm main' | sudo tee {BROKEN_LIST} >/dev/null")
    try:
        proc = upgrade(dep, "--yes", "--no-backup")
    finally:
        dep.ssh("workers", 0, f"sudo rm -f {BROKEN_LIST}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-6000:]
    # Named on the terminal: the host, the step and apt's reason; the error line says where to look.
    assert f"upgrade of {workers[0]} failed at Refresh the apt cache" in out
    assert "127.0.0.1:9" in out and "(the node is active again)" in out
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and workers[0] in err[0] and "Traceback" not in proc.stderr, proc.stderr
    # Left Active (and Ready), not Drained; the rolling upgrade stopped before the next worker.
    assert nodes(dep)[workers[0]] == ("Ready", "Active"), nodes(dep)
    assert all(a == "Active" for _, a in nodes(dep).values()), nodes(dep)
    assert not re.search(rf"^\s+{re.escape(workers[1])}\s+ok=", proc.stdout, re.M), "the next worker was upgraded"
    wait_for(lambda: len(running_tasks(dep)) == 2, "the service runs its 2 replicas again", 120, interval=1)


def test_a_host_lost_mid_upgrade_is_named_left_drained(dep):
    """A worker that loses power while drained: Ansible runs nothing more on an unreachable host (no
    rescue, no always), so cbm upgrade itself finds the drained node and says so in its exit."""
    import subprocess

    workers = worker_names(dep)
    server_id = dep.hosts["children"]["workers"]["hosts"][workers[0]]["cbm_server_id"]
    found = subprocess.run(["docker", "ps", "-q", "--filter", "label=cbm-sandbox", "--filter", f"name=-{server_id[:8]}$"],
                           capture_output=True, text=True).stdout.split()
    assert len(found) == 1, found
    container = found[0]

    def availability() -> str:
        out = dep.ssh("manager", 0, NODES, check=False)
        return next((line.split()[2] for line in out.splitlines() if line.split()[:1] == [workers[0]]), "")

    proc = dep.background("upgrade", str(dep.spec), "--yes", "--no-backup")
    try:
        wait_for(lambda: availability() == "Drain" or proc.poll() is not None, f"{workers[0]} is drained", 600,
                 interval=1)
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        subprocess.run(["docker", "kill", container], check=True, capture_output=True)  # power cut
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["docker", "start", container], capture_output=True)  # power back
    assert proc.returncode == 4, out[-6000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("cbm: error:") and "Traceback" not in out, out[-4000:]
    assert f"LEFT DRAINED: {workers[0]}" in last and "docker node update --availability active" in last, last
    assert availability() == "Drain"

    # Bring it back as the message says (the deployment stays usable for the next tests).
    wait_for(lambda: nodes(dep).get(workers[0], ("", ""))[0] == "Ready", f"{workers[0]} is back", timeout=300,
             interval=1)
    dep.ssh("manager", 0, f"sudo docker node update --availability active {workers[0]}")
    assert all(v == ("Ready", "Active") for v in nodes(dep).values()), nodes(dep)
    wait_for(lambda: len(running_tasks(dep)) == 2, "the service runs its 2 replicas again", 120, interval=1)
