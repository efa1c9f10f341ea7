"""`cbm up / plan / down` with the real openstacksdk against the sandbox cloud (real containers,
loop-device volumes, addresses the host can SSH to).

One deployment (1 manager + 2 workers) goes through its whole life in file order: up from nothing, up
again, SSH into every host, plan after a manual deletion, down --keep-volume with foreign look-alikes
around, up again with the data intact, down to nothing. A second, smaller deployment meets faults.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_one_line_error, run_cbm

pytestmark = pytest.mark.docker

SANDBOX_SPEC = REPO / "inventories" / "sandbox" / "deployment.yml"


class Deployment:
    """A spec in a temp folder, its own state root, and the sandbox's clouds.yaml."""

    def __init__(self, sandbox, folder: Path, name: str, workers: int, **overrides):
        self.sandbox = sandbox
        self.name = name
        self.prefix = f"cbm-{name}"
        data = yaml.safe_load(SANDBOX_SPEC.read_text())
        data.update(name=name, prefix=self.prefix, workers=workers, timeouts={"wait": 120, "api": 10})
        data["volume"] = {"size": 8}   # a sparse file; the least for workers: 0 (provision/cloud/spec.py)
        data.update(overrides)
        (folder / name).mkdir(parents=True)
        self.spec = folder / name / "deployment.yml"
        self.spec.write_text(yaml.safe_dump(data))
        self.state_home = folder / "state"
        self.env = {**sandbox.env, "XDG_STATE_HOME": str(self.state_home)}
        self.conn = sandbox.connect()

    @property
    def state(self) -> Path:
        return self.state_home / "cbm" / self.name

    @property
    def hosts_yml(self) -> Path:
        return self.spec.parent / "hosts.yml"

    def cbm(self, *args: str, check: bool = True):
        if args[:1] == ("up",):  # these tests are about the cloud; configuration has its own tests
            args = (*args, "--no-configure")
        proc = run_cbm(*args, str(self.spec), env=self.env)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    # -- what the cloud holds
    def owned(self) -> dict:
        """Everything in the cloud that carries this deployment's mark or name prefix."""
        c, tag, p = self.conn, f"cbm-deployment={self.name}", self.prefix
        servers = [s for s in c.compute.servers() if tag in (s.tags or []) or s.name.startswith(p)]
        server_ids = {s.id for s in servers}
        return {
            "servers": servers,
            "volumes": [v for v in c.block_storage.volumes() if (v.metadata or {}).get("cbm-deployment") == self.name
                        or (v.name or "").startswith(p)],
            "ports": [pt for pt in c.network.ports() if pt.device_id in server_ids],
            "floating_ips": [i for i in c.network.ips() if tag in (i.tags or []) or self.name in (i.description or "")],
            "security_groups": [g for g in c.network.security_groups() if g.name.startswith(p)],
            "keypairs": [k for k in c.compute.keypairs() if k.name.startswith(p)],
        }

    # -- SSH as Ansible would, from the inventory
    def ssh_commands(self) -> dict[str, list[str]]:
        inv = yaml.safe_load(self.hosts_yml.read_text())["all"]
        common = inv["vars"]
        out = {}
        for group in ("manager", "workers"):
            for name, hv in (inv["children"][group]["hosts"] or {}).items():
                out[name] = ["ssh", "-i", common["ansible_ssh_private_key_file"], "-o", "BatchMode=yes",
                             "-o", "ConnectTimeout=5", *shlex.split(hv["ansible_ssh_common_args"]),
                             f"{common['ansible_user']}@{hv['ansible_host']}"]
        return out

    def ssh(self, host: str, command: str, timeout: float = 90) -> str:
        """Run a command on a host; polls while sshd is still starting (a fresh server)."""
        cmd = self.ssh_commands()[host] + [command]
        deadline = time.monotonic() + timeout
        while True:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if proc.returncode == 0:
                return proc.stdout
            if proc.returncode != 255 or time.monotonic() > deadline:   # 255: ssh itself failed
                raise AssertionError(f"ssh {host} {command!r}: rc={proc.returncode} {proc.stderr}")
            time.sleep(1)


@pytest.fixture(scope="module")
def dep(sandbox, tmp_path_factory):
    d = Deployment(sandbox, tmp_path_factory.mktemp("prov"), "tpc", workers=2)
    yield d
    run_cbm("down", "--yes", str(d.spec), env=d.env)


@pytest.fixture(scope="module")
def foreign(dep):
    """Look-alikes that belong to someone else: same names, no ownership marks."""
    c = dep.conn
    made = {"sg": c.network.create_security_group(name=f"{dep.prefix}-sg", description="someone else's"),
            "sg2": c.network.create_security_group(name=f"{dep.prefix}-sg-old", description="someone else's"),
            "volume": c.block_storage.create_volume(name=f"{dep.prefix}-data", size=1)}
    c.block_storage.wait_for_status(made["volume"], "available", interval=0.3, wait=60)
    yield made
    c.network.delete_security_group(made["sg"], ignore_missing=True)
    c.network.delete_security_group(made["sg2"], ignore_missing=True)
    c.block_storage.delete_volume(made["volume"], ignore_missing=True)


def test_up_from_nothing_then_up_again_changes_nothing(dep, foreign):
    assert all(not v for k, v in dep.owned().items() if k not in ("security_groups", "volumes")), dep.owned()
    proc = dep.cbm("up")
    assert "change(s) made" in proc.stdout
    key = (dep.state / "id_ed25519").read_text()
    assert "PRIVATE KEY" in key and key.strip().splitlines()[1] not in proc.stdout + proc.stderr
    assert oct((dep.state / "id_ed25519").stat().st_mode & 0o777) == "0o600"
    assert oct(dep.state.stat().st_mode & 0o777) == "0o700"

    owned = dep.owned()
    servers = {s.name: s for s in owned["servers"]}
    assert sorted(servers) == [f"{dep.prefix}-manager", f"{dep.prefix}-worker-1", f"{dep.prefix}-worker-2"]
    assert all(s.status == "ACTIVE" for s in servers.values())
    manager = servers[f"{dep.prefix}-manager"]
    ours = [v for v in owned["volumes"] if v.id != foreign["volume"].id]
    assert len(ours) == 1 and ours[0].status == "in-use"
    assert [a["server_id"] for a in ours[0].attachments] == [manager.id]
    # marked once attached (the UTC time): from now on it may hold data (see the errored-volume test)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ours[0].metadata["cbm-attached"]), ours[0].metadata
    (fip,) = owned["floating_ips"]
    assert fip.port_id in {p.id for p in owned["ports"] if p.device_id == manager.id}
    group = next(g for g in owned["security_groups"] if g.id not in (foreign["sg"].id, foreign["sg2"].id))
    rules = {(r["protocol"], r["port_range_min"], r["remote_ip_prefix"], bool(r["remote_group_id"]))
             for r in group.security_group_rules if r["direction"] == "ingress"}
    assert ("tcp", 22, "10.0.0.0/8", False) in rules and ("tcp", 11039, "10.0.0.0/8", False) in rules
    assert {("tcp", 2377, None, True), ("tcp", 7946, None, True), ("udp", 7946, None, True),
            ("udp", 4789, None, True)} <= rules
    assert not any(prefix and prefix.endswith("/0") for _, _, prefix, _ in rules)

    # with one item per page the driver still sees everything (the SDK follows the next links)
    page_size = dep.sandbox.settings()["page_size"]
    dep.sandbox.settings(page_size=1)
    try:
        again = dep.cbm("up")
    finally:
        dep.sandbox.settings(page_size=page_size)
    assert "No changes" in again.stdout, again.stdout + again.stderr
    assert dep.cbm("plan").stdout.startswith("No changes")


def test_ssh_with_the_generated_key_into_every_server(dep):
    inv = yaml.safe_load(dep.hosts_yml.read_text())["all"]
    assert inv["vars"]["cbm_db_port"] == 11039 and inv["vars"]["ansible_user"] == "eouser"
    commands = dep.ssh_commands()
    assert len(commands) == 3
    for host in commands:
        assert dep.ssh(host, "hostname").strip() == host
    manager = inv["children"]["manager"]["hosts"][f"{dep.prefix}-manager"]
    device = manager["cbm_data_device"]
    assert device.startswith("/dev/")
    dep.ssh(f"{dep.prefix}-manager", f"test -b {device}")
    # as on OpenStack with virtio: the disk is also named by the volume id (its first 20 characters)
    by_id = f"/dev/disk/by-id/virtio-{manager['cbm_data_volume_id'][:20]}"
    assert dep.ssh(f"{dep.prefix}-manager", f"readlink -f {by_id}").strip() == device
    # the data volume, formatted and written as the configuration would
    dep.ssh(f"{dep.prefix}-manager", f"sudo mkfs.ext4 -q -F {device} && sudo mount {device} /mnt && "
                                     "echo precious | sudo tee /mnt/marker >/dev/null && sudo umount /mnt")


def test_plan_after_a_manual_deletion_shows_exactly_that(dep):
    c = dep.conn
    worker = c.compute.find_server(f"{dep.prefix}-worker-2")
    c.compute.delete_server(worker)
    c.compute.wait_for_delete(worker, interval=0.3, wait=60)
    group = next(g for g in c.network.security_groups(tags=[f"cbm-deployment={dep.name}"]))
    rule = next(r for r in group.security_group_rules
                if r["direction"] == "ingress" and r["port_range_min"] == 11039 and r["remote_ip_prefix"] == "10.0.0.0/8")
    c.network.delete_security_group_rule(rule["id"])

    plan = dep.cbm("plan").stdout
    changes = [line for line in plan.splitlines() if line.startswith("    ")]
    assert len(changes) == 2, plan
    assert "create" in changes[0] and "rule" in changes[0] and "tcp/11039 from 10.0.0.0/8" in changes[0]
    assert "create" in changes[1] and f"{dep.prefix}-worker-2" in changes[1]
    assert c.compute.find_server(f"{dep.prefix}-worker-2") is None, "plan touched nothing"

    dep.cbm("up")
    assert dep.cbm("plan").stdout.startswith("No changes")
    assert dep.ssh(f"{dep.prefix}-worker-2", "hostname").strip() == f"{dep.prefix}-worker-2"

    # a server someone shut off is started again
    worker = c.compute.find_server(f"{dep.prefix}-worker-1")
    c.compute.stop_server(worker)
    c.compute.wait_for_server(worker, status="SHUTOFF", interval=0.3, wait=60)
    plan = [line for line in dep.cbm("plan").stdout.splitlines() if line.startswith("    ")]
    assert len(plan) == 1 and "start" in plan[0] and f"{dep.prefix}-worker-1" in plan[0], plan
    dep.cbm("up")
    assert c.compute.get_server(worker.id).status == "ACTIVE"
    assert dep.ssh(f"{dep.prefix}-worker-1", "hostname").strip() == f"{dep.prefix}-worker-1"


def test_down_keep_volume_then_up_finds_the_files(dep, foreign):
    before = {v.id for v in dep.owned()["volumes"]} - {foreign["volume"].id}
    proc = run_cbm("down", "--keep-volume", str(dep.spec), env=dep.env)   # no terminal, no --yes
    assert f"{dep.prefix}-manager" in proc.stdout, "the list is printed first"
    assert_one_line_error(proc, "--yes", code=2)
    assert len(dep.owned()["servers"]) == 3, "nothing deleted without confirmation"
    # on a terminal it asks; anything but yes cancels, and so does the end of input (Ctrl-D)
    for typed in (b"n\n", b"\x04"):
        primary, secondary = os.openpty()
        os.write(primary, typed)
        proc = subprocess.run([sys.executable, "-m", "cbm", "down", "--keep-volume", str(dep.spec)],
                              stdin=secondary, capture_output=True, text=True, env={**os.environ, **dep.env},
                              timeout=120)
        os.close(primary)
        os.close(secondary)
        assert "[y/N]" in proc.stdout and "cancelled" in proc.stderr and proc.returncode == 2, proc
        assert "Traceback" not in proc.stderr, proc.stderr
        assert len(dep.owned()["servers"]) == 3, f"nothing deleted after {typed!r}"

    proc = dep.cbm("down", "--keep-volume", "--yes")
    assert "kept" in proc.stdout
    owned = dep.owned()
    assert not owned["servers"] and not owned["ports"] and not owned["floating_ips"] and not owned["keypairs"]
    assert {g.id for g in owned["security_groups"]} == {foreign["sg"].id, foreign["sg2"].id}
    assert {v.id for v in owned["volumes"]} == before | {foreign["volume"].id}
    assert all(v.status == "available" for v in owned["volumes"])

    dep.cbm("up")
    assert dep.ssh(f"{dep.prefix}-manager", "sudo mount /dev/vdb /mnt && cat /mnt/marker && sudo umount /mnt")\
        .strip() == "precious"
    assert {v.id for v in dep.owned()["volumes"]} == before | {foreign["volume"].id}


def test_down_leaves_nothing_of_the_deployment_and_spares_look_alikes(dep, foreign):
    # A configured deployment (it has a database password) whose database cannot be reached: the backup
    # that `down` takes first fails, and nothing is deleted; --no-backup goes ahead without one.
    password = dep.state / "db_password"
    password.write_text("not-a-real-password")
    password.chmod(0o600)
    count = {kind: len(items) for kind, items in dep.owned().items()}
    err = assert_one_line_error(dep.cbm("down", "--yes", check=False), "backup failed", "nothing was deleted",
                                "--no-backup", code=1)
    assert "not-a-real-password" not in err
    assert {kind: len(items) for kind, items in dep.owned().items()} == count
    proc = dep.cbm("down", "--yes", "--no-backup")
    assert "backup skipped (--no-backup)" in proc.stdout
    assert not (dep.state / "backups").exists() or not list((dep.state / "backups").iterdir())
    owned = dep.owned()
    assert not owned["servers"] and not owned["ports"] and not owned["floating_ips"] and not owned["keypairs"]
    assert {g.id for g in owned["security_groups"]} == {foreign["sg"].id, foreign["sg2"].id}
    assert {v.id for v in owned["volumes"]} == {foreign["volume"].id}
    assert not (dep.state / "known_hosts").exists()
    again = dep.cbm("down", "--yes")
    assert "Nothing of deployment" in again.stderr + again.stdout


# ---------------------------------------------------------------------------------------- faults

@pytest.fixture
def small(sandbox, tmp_path):
    d = Deployment(sandbox, tmp_path, "tpf", workers=1, timeouts={"wait": 60, "api": 3})
    yield d
    sandbox.clear_faults()
    run_cbm("down", "--yes", str(d.spec), env=d.env)


def assert_failed_clearly(proc, *needles):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cbm: error: "), proc.stderr
    for needle in needles:
        assert needle.lower() in last.lower(), last
    return last


def test_faults_fail_clearly_and_a_second_up_converges(small, sandbox):
    # the group is created, tagging it fails: the next up knows it by its description and tags it
    sandbox.inject(kind="security_group.tags", mode="error")
    assert_failed_clearly(small.cbm("up", check=False), "tagging security group", "HTTP 500")
    sandbox.inject(kind="volume.create", mode="quota")
    proc = small.cbm("up", check=False)
    last = assert_failed_clearly(proc, "creating volume", "quota exceeded")
    assert "413" in last and "add the ownership tag" in proc.stderr
    assert len(small.owned()["security_groups"]) == 1

    sandbox.inject(kind="server.create", mode="error")
    assert_failed_clearly(small.cbm("up", check=False), "creating server", "HTTP 500", "run the command again")

    # a create call that hangs: the client gives up after timeouts.api with a clear line
    sandbox.inject(kind="server.create", mode="timeout", seconds=6)
    assert_failed_clearly(small.cbm("up", check=False), "creating server", "timed out", "run the command again")

    # down after a failed up leaves nothing; never configured, it has no database to back up
    proc = small.cbm("down", "--yes")
    assert "nothing to back up" in proc.stdout and "never configured" in proc.stdout
    assert not any(small.owned().values()), small.owned()

    sandbox.inject(kind="fip.create", mode="quota")
    assert_failed_clearly(small.cbm("up", check=False), "floating IP", "quota exceeded")
    assert len(small.owned()["servers"]) == 2
    # a floating IP whose tagging failed still belongs to the deployment (description): down removes it
    sandbox.inject(kind="fip.tags", mode="error")
    assert_failed_clearly(small.cbm("up", check=False), "tagging floating IP", "HTTP 500")
    assert len(small.owned()["floating_ips"]) == 1
    small.cbm("down", "--yes")
    assert not any(small.owned().values()), small.owned()

    # a volume or a server that fails to build is reported, and replaced by the next up
    sandbox.inject(kind="volume.build", mode="error")
    sandbox.inject(kind="server.boot", mode="error")
    proc = small.cbm("up", check=False)
    last = assert_failed_clearly(proc, "server cbm-tpf-", "ERROR", "No valid host was found")
    assert "run `cbm up` again" in last
    plan = small.cbm("plan").stdout
    replaced = [line for line in plan.splitlines() if "replace" in line]
    assert len(replaced) == 2, plan
    assert "volume" in replaced[0] and "in state error, never attached" in replaced[0]
    assert "server" in replaced[1] and "in state ERROR: No valid host" in replaced[1]
    proc = small.cbm("up")
    assert "replace server" in proc.stderr and "replace volume" in proc.stderr
    assert all(s.status == "ACTIVE" for s in small.owned()["servers"])
    small.cbm("down", "--yes")
    assert not any(small.owned().values()), small.owned()

    # transient errors and hung calls while waiting are polled through: up from nothing converges
    sandbox.inject(kind="server.get", mode="timeout", count=2, seconds=6)
    sandbox.inject(kind="volume.get", mode="error", count=2)
    proc = small.cbm("up")
    assert "retrying" in proc.stderr and "timed out" in proc.stderr, proc.stderr
    assert sandbox.faults() == [], "every injected fault was met"
    assert small.cbm("up").stdout.startswith("No changes")
    assert small.ssh(f"{small.prefix}-worker-1", "hostname").strip() == f"{small.prefix}-worker-1"


def test_an_errored_volume_that_was_attached_is_replaced_only_when_asked(sandbox, tmp_path):
    """Cinder can leave a volume that holds data in state error: `cbm up` never deletes a volume that was
    ever attached (its mark) unless told to with --replace-volume."""
    d = Deployment(sandbox, tmp_path, "tpv", workers=0)
    try:
        d.cbm("up")
        (vol,) = d.owned()["volumes"]
        d.cbm("down", "--keep-volume", "--yes")     # detached: only the mark says it held data
        d.conn.block_storage.reset_volume_status(vol, status="error")
        assert d.conn.block_storage.get_volume(vol.id).attachments == []

        err = assert_one_line_error(d.cbm("up", check=False), f"volume cbm-tpv-data ({vol.id})", "state error",
                                    "was attached", f"cbm up {d.spec} --replace-volume", code=2)
        assert "data is lost" in err
        assert not d.owned()["servers"] and not d.owned()["keypairs"], "up stopped before changing anything"
        assert [(v.id, v.status) for v in d.owned()["volumes"]] == [(vol.id, "error")]
        plan = d.cbm("plan").stdout
        assert re.search(r"replace\s+volume\s+cbm-tpv-data .*was attached.*--replace-volume", plan), plan

        proc = d.cbm("up", "--replace-volume")
        assert "replace volume cbm-tpv-data" in proc.stderr and "data is lost" in proc.stderr
        (new,) = d.owned()["volumes"]
        assert new.id != vol.id and new.status == "in-use" and new.metadata["cbm-attached"] != "no"
        assert d.cbm("up").stdout.startswith("No changes")
    finally:
        run_cbm("down", "--yes", str(d.spec), env=d.env)


def test_spec_changes_converge(small):
    small.cbm("up")
    data = yaml.safe_load(small.spec.read_text())
    data["workers"] = 0
    data["ingress"]["ssh"] = ["192.0.2.0/24"]
    small.spec.write_text(yaml.safe_dump(data))
    plan = [line.split() for line in small.cbm("plan").stdout.splitlines() if line.startswith("    ")]
    assert sorted(" ".join(p[1:4]) for p in plan) == sorted(
        ["create rule cbm-tpf-sg", "delete rule cbm-tpf-sg", "delete rule cbm-tpf-sg", "delete rule cbm-tpf-sg",
         "delete rule cbm-tpf-sg", "delete server cbm-tpf-worker-1"]), plan
    small.cbm("up")
    assert [s.name for s in small.owned()["servers"]] == ["cbm-tpf-manager"]
    assert small.cbm("plan").stdout.startswith("No changes")
    assert list(yaml.safe_load(small.hosts_yml.read_text())["all"]["children"]["workers"]["hosts"] or {}) == []


@pytest.mark.parametrize("key, value, needle", [
    ("image", "Windows 95", "'image'"),
    ("flavors", {"manager": "eo9.huge", "worker": "eo1.xsmall"}, "'flavors.manager'"),
    ("networks", {"private": "nope", "eodata": "eodata", "floating_pool": "external"}, "'networks.private'"),
    ("networks", {"private": "cbm-private", "eodata": "eodata", "floating_pool": "eodata"},
     "'networks.floating_pool'"),
])
def test_specs_naming_what_the_cloud_lacks_give_one_line(sandbox, tmp_path, key, value, needle):
    d = Deployment(sandbox, tmp_path, "tpb", workers=1, **{key: value})
    for command in ("plan", "up"):
        proc = d.cbm(command, check=False)
        assert_one_line_error(proc, needle, str(d.spec), code=2)
    assert not any(d.owned().values())


def test_a_keypair_that_is_not_provably_ours_is_left_alone(sandbox, tmp_path):
    d = Deployment(sandbox, tmp_path, "tpk", workers=0)
    other = d.conn.compute.create_keypair(name="cbm-tpk-key", public_key=(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBz4rA2+3Xh8Kq1b3pTqk8yD0l6S0mC1n6Xq6wq4u9Zt someone-else"))
    try:
        proc = d.cbm("down", "--yes")
        assert "left alone" in proc.stderr + proc.stdout
        assert d.conn.compute.get_keypair("cbm-tpk-key").public_key == other.public_key
        err = assert_one_line_error(d.cbm("up", check=False), "keypair 'cbm-tpk-key'", "not this deployment's",
                                    code=1)
        assert "prefix" in err
        assert not [s for s in d.owned()["servers"]]
    finally:
        d.conn.compute.delete_keypair("cbm-tpk-key", ignore_missing=True)


def test_ambiguous_names_and_duplicates_are_errors_not_guesses(sandbox, tmp_path):
    c = sandbox.connect()
    nets = [c.network.create_network(name="tpa-twin") for _ in range(2)]
    d = Deployment(sandbox, tmp_path, "tpa", workers=0,
                   networks={"private": "tpa-twin", "eodata": "eodata", "floating_pool": "external"})
    groups = []
    try:
        assert_one_line_error(d.cbm("plan", check=False), "'networks.private'", "ambiguous", code=2)
        spec = yaml.safe_load(d.spec.read_text())
        spec["networks"]["private"] = "cbm-private"
        d.spec.write_text(yaml.safe_dump(spec))
        # two groups that both carry this deployment's mark: which one is right is not guessed
        groups = [c.network.create_security_group(name=f"tpa-{i}") for i in range(2)]
        for g in groups:
            c.network.set_tags(g, ["cbm-deployment=tpa"])
        err = assert_one_line_error(d.cbm("plan", check=False), "ambiguous", "2 security groups", code=1)
        assert groups[0].id in err and groups[1].id in err
    finally:
        for g in groups:
            c.network.delete_security_group(g, ignore_missing=True)
        for n in nets:
            c.network.delete_network(n, ignore_missing=True)
