"""`cbm configure` (playbooks/site.yml) on real hosts: 1 manager + 2 workers of the sandbox kind
(containers with sshd, their own dockerd and a loop-device volume as /dev/vdb), from scratch.

Nothing here is mocked: the roles install Docker from deb.debian.org, move its data-root, build
the PostGIS image on the manager FROM a base image handed over as a tarball, start PostGIS, create
the schema with `cbm db init` and join the swarm.

Cached between runs (to keep the suite lean): the base image given to the PostGIS build already
has the PostgreSQL/PostGIS packages installed (built once on this machine, see pgbase_image), and
the controller's tarball of it. The hosts, their Docker, the build and everything else are new.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import pytest
import yaml

from conftest import REPO, assert_one_line_error, run_cbm

pytestmark = pytest.mark.docker

LABEL = "cbm-configure-test"
NAME = "cfgtest"
DB_PORT = 11039
CACHE = REPO / ".state" / "configure-test"
PGBASE_DOCKERFILE = """\
FROM cbm-sandbox/base:bookworm
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 postgresql-15-postgis-3 \\
 && (pg_dropcluster --stop 15 main || true) && rm -rf /var/lib/apt/lists/*
LABEL cbm-configure-test=1
"""
# The sandbox hosts cannot raise rlimits (no CAP_SYS_RESOURCE), which Debian's docker init script
# tries: keep the limits they have (the sandbox's own concern, applied here like an image tweak).
ULIMIT_SHIM = "ulimit() { command ulimit \"$@\" 2>/dev/null || true; }\n"


def sh(*cmd: str, check: bool = True, timeout: int = 900, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def on_host(container: str, script: str, check: bool = True) -> str:
    return sh("docker", "exec", container, "sh", "-c", script, check=check).stdout.strip()


def pgbase_image() -> str:
    """A Debian base with the PostGIS packages preinstalled (built once, reused across runs)."""
    base_id = sh("docker", "image", "inspect", "--format", "{{.Id}}", "cbm-sandbox/base:bookworm").stdout.strip()
    tag = "cbm-configure-test/pgbase:" + hashlib.sha256((PGBASE_DOCKERFILE + base_id).encode()).hexdigest()[:12]
    if sh("docker", "image", "inspect", tag, check=False).returncode != 0:
        ctx = CACHE / "pgbase"
        ctx.mkdir(parents=True, exist_ok=True)
        (ctx / "Dockerfile").write_text(PGBASE_DOCKERFILE)
        sh("docker", "build", "-q", "-t", tag, str(ctx), env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return tag


@dataclass
class Cluster:
    root: Path
    env: dict
    spec: Path
    containers: dict[str, str]          # inventory name -> container name
    ips: dict[str, str]
    manager: str = ""
    times: dict = field(default_factory=dict)

    def password(self) -> str:
        return (Path(self.env["XDG_STATE_HOME"]) / "cbm" / NAME / "db_password").read_text()

    def connect(self, password: str | None = "default", **kw):
        if password == "default":
            password = self.password()
        params = dict(host=self.ips[self.manager], port=DB_PORT, user="postgres", dbname="postgres",
                      connect_timeout=10, **kw)
        if password is not None:
            params["password"] = password
        conn = psycopg2.connect(**params)
        conn.autocommit = True
        return conn

    def configure(self, spec: Path | None = None, *args: str):
        start = time.monotonic()
        proc = run_cbm("configure", str(spec or self.spec), *args, env=self.env, timeout=1800)
        return proc, time.monotonic() - start


def summary(stdout: str) -> dict[str, dict[str, int]]:
    """The per-host summary lines of `cbm configure`: {host: {ok: n, changed: n, ...}}."""
    hosts = {}
    for line in stdout.splitlines():
        m = re.match(r"\s+(\S+)\s+(ok=\d+ changed=\d+ failed=\d+ unreachable=\d+ skipped=\d+)$", line)
        if m:
            hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return hosts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if sh("docker", "info", check=False).returncode != 0:
        pytest.skip("needs a Docker Engine (./run test starts one)")
    from provision.cloud import reconcile
    from provision.cloud import spec as spec_mod
    from provision.hosts import inventory
    from provision.hosts.files import DeploymentFiles
    from sandbox.cloud import hostimage

    root = tmp_path_factory.mktemp("configure")
    tag = f"{LABEL}-{os.getpid()}"
    env = {"XDG_STATE_HOME": str(root / "state"), "XDG_CONFIG_HOME": str(root / "config")}
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = env["XDG_STATE_HOME"]
    created, loop = [], None
    # Nested containers fail with the per-hierarchy cgroup binds of the sandbox hosts (runc: "error
    # mounting cgroup ... stat /sys/fs/cgroup/<id>"); the whole /sys/fs/cgroup bind works, and the host
    # image diverts cgroupfs-umount, which made that bind dangerous. Reported to the sandbox's owner.
    cgroup_mounts = hostimage.cgroup_mounts
    hostimage.cgroup_mounts = lambda: ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
    try:
        hostimage.ensure_host_image()
        pgbase = pgbase_image()
        sh("docker", "network", "create", "--label", f"{LABEL}=1", tag)
        created.append(("network", tag))
        files = DeploymentFiles(NAME)
        files.folder()
        key = files.private_key
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", NAME, "-f", str(key))
        names = {"cfgtest-manager": f"{tag}-m", "cfgtest-worker-1": f"{tag}-w1", "cfgtest-worker-2": f"{tag}-w2"}
        for host, container in names.items():
            mounts = []
            if host != "cfgtest-manager":
                # Workers have no data volume: /data is a folder of the root filesystem, which in a
                # sandbox container must not be overlayfs for the nested dockerd.
                data = root / f"data-{host}"
                data.mkdir()
                mounts = [(str(data), "/data", False)]
            hostimage.create_host(container, authorized_keys=Path(f"{key}.pub").read_text(), network=tag,
                                  hostname=host, labels={LABEL: "1"}, mounts=mounts)
            created.append(("container", container))
            on_host(container, f"printf '%s' '{ULIMIT_SHIM}' >> /etc/default/docker")
        ips = {h: hostimage.container_ips(c)[tag] for h, c in names.items()}
        # The data volume: a sparse file on a loop device, /dev/vdb in the manager.
        image = root / "volume.img"
        sh("truncate", "-s", "2G", str(image))
        loop = sh("losetup", "-f", "--show", str(image)).stdout.strip()
        st = os.stat(loop)
        hostimage.add_block_device(names["cfgtest-manager"], "/dev/vdb", os.major(st.st_rdev), os.minor(st.st_rdev),
                                   serial="test-volume")   # /dev/disk/by-id/virtio-test-volume, as on OpenStack
        for ip in ips.values():
            hostimage.wait_for_ssh(ip)
        preseed_docker(names["cfgtest-worker-2"])

        spec_dir = root / "inventories" / NAME
        spec_dir.mkdir(parents=True)
        spec_path = spec_dir / "deployment.yml"
        spec_path.write_text(yaml.safe_dump({
            "name": NAME, "cloud": "cbm-sandbox", "image": "Debian 12",
            "flavors": {"manager": "m1.small", "worker": "m1.small"}, "workers": 2, "volume": {"size": 2},
            "networks": {"private": tag, "eodata": "eodata", "floating_pool": "external"},
            "db_port": DB_PORT, "ingress": {"ssh": ["172.16.0.0/12"], "db": ["172.16.0.0/12"]},
            "ssh_user": "eouser", "timeouts": {"wait": 60}}))
        (spec_dir / "configure.yml").write_text(yaml.safe_dump({
            "postgis_image_source": "build", "postgis_image": "cbm-configure-test/postgis:15-3",
            "postgis_build_base_image": pgbase, "postgis_build_cache_dir": str(CACHE / "images")}))
        spec = spec_mod.load(spec_path)
        hosts = [reconcile.Host(h, "manager" if h.endswith("manager") else "worker", ip, names[h])
                 for h, ip in ips.items()]
        inventory.write(spec, hosts, ips["cfgtest-manager"], "/dev/vdb", "test-volume")
        yield Cluster(root=root, env=env, spec=spec_path, containers=names, ips=ips, manager="cfgtest-manager")
    finally:
        hostimage.cgroup_mounts = cgroup_mounts
        for kind, name in reversed(created):
            sh("docker", kind, "rm", "-f", name, check=False) if kind == "container" else \
                sh("docker", "network", "rm", name, check=False)
        if loop:
            sh("losetup", "-d", loop, check=False)
        if saved is None:
            os.environ.pop("XDG_STATE_HOME", None)
        else:
            os.environ["XDG_STATE_HOME"] = saved


def preseed_docker(container: str) -> None:
    """A host that already runs Docker with data in /var/lib/docker: an image and a container
    whose volume holds a file."""
    on_host(container, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
                       "-o Dpkg::Options::=--force-confold --no-install-recommends docker.io >/dev/null")
    on_host(container, "for i in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done; "
                       "tar -C / -chf /tmp/keep.tar usr/bin/dash usr/lib/x86_64-linux-gnu/libc.so.6 "
                       "lib64/ld-linux-x86-64.so.2 && docker import /tmp/keep.tar cbm-keep:1 >/dev/null && "
                       "docker run --name cbm-keep -v keepvol:/keep cbm-keep:1 /usr/bin/dash -c "
                       "'echo kept > /keep/marker'")
    assert on_host(container, "docker info --format '{{.DockerRootDir}}'") == "/var/lib/docker"


# -- the tests, in order: check on fresh hosts, cold run, no-change run, check mode, data survival,
#    bad inputs ----------------------------------------------------------------------------------
def test_check_mode_on_fresh_hosts_changes_nothing(cluster):
    proc, _ = cluster.configure(None, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert "check mode" in proc.stdout
    assert re.search(r"Install the Docker Engine\n(\s+would change: \S+\n){3}", proc.stdout), proc.stdout
    w1 = cluster.containers["cfgtest-worker-1"]
    assert on_host(w1, "command -v docker || echo none") == "none"
    assert on_host(cluster.containers[cluster.manager], "blkid -p /dev/vdb || echo blank") == "blank"


def test_cold_run_configures_everything(cluster):
    proc, seconds = cluster.configure()
    cluster.times["cold"] = seconds
    print(f"\ncold site.yml: {seconds:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert "summary" in proc.stdout and "base : Install the base packages" in proc.stdout
    assert set(summary(proc.stdout)) == set(cluster.containers)

    # Docker's data-root is on /data/docker everywhere; /data on the manager is the volume, by UUID.
    for container in cluster.containers.values():
        assert on_host(container, "docker info --format '{{.DockerRootDir}}'") == "/data/docker"
    manager = cluster.containers[cluster.manager]
    assert on_host(manager, "findmnt -n -o SOURCE --mountpoint /data | tail -n 1") == "/dev/vdb"
    assert re.search(r"^UUID=\S+\s+/data\s+ext4", on_host(manager, "cat /etc/fstab"), re.M)
    assert "RequiresMountsFor=/data" in on_host(manager, "cat /etc/systemd/system/docker.service.d/*.conf")
    # The PostGIS data volume lives under the relocated root.
    assert on_host(manager, "docker volume inspect -f '{{.Mountpoint}}' cbm-pgdata").startswith("/data/docker/")

    # PostGIS on the spec's port: the password works, a wrong one and none are refused.
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT postgis_version()")
        assert cur.fetchone()[0].startswith("3.")
        cur.execute("SELECT array_agg(tablename::text ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'")
        tables = set(cur.fetchone()[0])
        cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tiger%%'")
        assert cur.fetchone()[0] == 0
    assert {"aois", "dias_catalogue", "sigs", "hists", "extraction_runs"} <= tables
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        cluster.connect(password="not-the-password")
    with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
        cluster.connect(password=None)
    hba = on_host(manager, "cat /etc/cbm/postgis/conf/pg_hba.conf")
    assert not re.search(r"^host\S*\s.*\btrust\b", hba, re.M) and "scram-sha-256" in hba
    # Private: published on the manager's private address only; the private network logs in with the
    # password, the spec's ingress.db (172.16.0.0/12) over TLS only, with the self-signed certificate.
    ip = cluster.ips[cluster.manager]
    assert on_host(manager, "docker port cbm-postgis 5432/tcp").split() == [f"{ip}:{DB_PORT}"]
    assert "0.0.0.0/0" not in hba and "::/0" not in hba
    assert re.search(r"^hostssl\s+all\s+all\s+172\.16\.0\.0/12\s+scram-sha-256$", hba, re.M), hba
    with cluster.connect(sslmode="require") as conn, conn.cursor() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert cur.fetchone() == (True,)
        cur.execute("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'cbm_worker'")
        assert cur.fetchone() == (True, False)

    # The password: 0600 on the controller, never in the output or the run's files.
    password_file = Path(cluster.env["XDG_STATE_HOME"]) / "cbm" / NAME / "db_password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = cluster.password()
    assert password not in proc.stdout + proc.stderr
    runs = Path(cluster.env["XDG_STATE_HOME"]) / "cbm" / NAME / "runs"
    leaked = sh("grep", "-rl", "-F", password, str(runs), check=False).stdout.strip()
    assert leaked == "", f"password found in {leaked}"
    assert len(list(runs.glob("*/artifacts/*/job_events"))) == 2       # the check run, this run

    # The swarm: 3 ready nodes, labelled by role.
    nodes = on_host(manager, "docker node ls --format '{{.Hostname}} {{.Status}}'").splitlines()
    assert sorted(nodes) == sorted(f"{h} Ready" for h in cluster.containers), nodes
    labels = on_host(manager, "for n in $(docker node ls -q); do docker node inspect -f "
                              "'{{.Description.Hostname}} {{index .Spec.Labels \"cbm.role\"}}' $n; done")
    assert sorted(labels.splitlines()) == ["cfgtest-manager manager", "cfgtest-worker-1 worker",
                                           "cfgtest-worker-2 worker"]

    # The host that had Docker with data in /var/lib/docker: its image and container still work.
    w2 = cluster.containers["cfgtest-worker-2"]
    assert on_host(w2, "docker start -a cbm-keep && docker run --rm -v keepvol:/keep cbm-keep:1 "
                       "/usr/bin/dash -c 'read line < /keep/marker; echo $line'") == "kept"


def test_second_run_changes_nothing(cluster):
    proc, seconds = cluster.configure()
    cluster.times["rerun"] = seconds
    print(f"\nno-change site.yml: {seconds:.0f} s")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    hosts = summary(proc.stdout)
    assert set(hosts) == set(cluster.containers)
    assert {h: s["changed"] for h, s in hosts.items()} == {h: 0 for h in cluster.containers}, proc.stdout
    assert "changed:" not in proc.stdout


def test_check_mode_reports_and_changes_nothing(cluster):
    manager = cluster.containers[cluster.manager]
    # Something to report: pg_hba.conf edited by hand on the host.
    on_host(manager, "echo '# hand edit' >> /etc/cbm/postgis/conf/pg_hba.conf")
    proc, _ = cluster.configure(None, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert "check mode" in proc.stdout
    assert re.search(r"Write pg_hba.conf.*\n\s+would change: cfgtest-manager", proc.stdout), proc.stdout
    assert "# hand edit" in on_host(manager, "cat /etc/cbm/postgis/conf/pg_hba.conf")


def test_data_survives_a_recreated_container(cluster):
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS survival (n integer)")
        cur.execute("INSERT INTO survival SELECT generate_series(1, 1000)")
    manager = cluster.containers[cluster.manager]
    before = on_host(manager, "docker inspect -f '{{.Id}}' cbm-postgis")
    on_host(manager, "docker rm -f cbm-postgis >/dev/null")
    proc, _ = cluster.configure()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr
    assert on_host(manager, "docker inspect -f '{{.Id}}' cbm-postgis") != before
    assert "# hand edit" not in on_host(manager, "cat /etc/cbm/postgis/conf/pg_hba.conf")
    with cluster.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), sum(n) FROM survival")
        assert cur.fetchone() == (1000, 500500)


# -- bad inputs: one line naming the host and the step ----------------------------------------
def variant(cluster, folder: str, edit) -> Path:
    """A copy of the deployment (same name, so same state) with an edited inventory."""
    spec_dir = cluster.root / "variants" / folder
    spec_dir.mkdir(parents=True)
    src = cluster.spec.parent
    spec = yaml.safe_load((src / "deployment.yml").read_text())
    spec["timeouts"] = {"wait": 8}
    inv = yaml.safe_load((src / "hosts.yml").read_text())
    edit(spec, inv)
    (spec_dir / "deployment.yml").write_text(yaml.safe_dump(spec))
    (spec_dir / "hosts.yml").write_text(yaml.safe_dump(inv))
    (spec_dir / "configure.yml").write_text((src / "configure.yml").read_text())
    return spec_dir / "deployment.yml"


def test_unreachable_host_is_named(cluster):
    def edit(spec, inv):
        worker = inv["all"]["children"]["workers"]["hosts"]["cfgtest-worker-1"]
        worker["ansible_host"] = "192.0.2.1"       # TEST-NET: nobody answers
    proc, _ = cluster.configure(variant(cluster, "unreachable", edit))
    assert_one_line_error(proc, "cfgtest-worker-1", "192.0.2.1", "no SSH answer", "waiting for SSH", code=1)


def test_wrong_ssh_key_is_named(cluster):
    other = cluster.root / "other_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))

    def edit(spec, inv):
        inv["all"]["vars"]["ansible_ssh_private_key_file"] = str(other)
    proc, _ = cluster.configure(variant(cluster, "wrongkey", edit))
    assert_one_line_error(proc, "cfgtest-manager", "refused the key", str(other), code=1)


def test_missing_volume_is_named(cluster):
    def edit(spec, inv):
        inv["all"]["children"]["manager"]["hosts"]["cfgtest-manager"]["cbm_data_volume_id"] = "no-such-volume"
    proc, _ = cluster.configure(variant(cluster, "novolume", edit))
    err = assert_one_line_error(proc, "cfgtest-manager", "data_volume", "no-such-volume", "not attached",
                                "/dev/disk/by-id/virtio-no-such-volume")
    assert proc.returncode == 2            # ansible-playbook's "a host failed"
    artifacts = Path(re.search(r"run artifacts: (\S+)\)", err).group(1))
    assert (artifacts / "job_events").is_dir()
    manager = cluster.containers[cluster.manager]
    assert on_host(manager, "findmnt -n -o SOURCE --mountpoint /data | tail -n 1") == "/dev/vdb"     # nothing undone


def test_partitioned_disk_is_refused_not_formatted(cluster):
    """A volume whose disk has a partition table (someone's data) is never formatted: the run stops in
    the preflight, before any host changes, naming the volume and what is on it."""
    from sandbox.cloud import hostimage

    manager = cluster.containers[cluster.manager]
    image = cluster.root / "partitioned.img"
    sh("truncate", "-s", "64M", str(image))
    sh("sfdisk", "-q", str(image), input="label: gpt\n,,L\n")
    table = sh("sfdisk", "-d", str(image)).stdout
    loop = sh("losetup", "-f", "--show", str(image)).stdout.strip()
    try:
        st = os.stat(loop)
        hostimage.add_block_device(manager, "/dev/vdc", os.major(st.st_rdev), os.minor(st.st_rdev),
                                   serial="partitioned-volume")

        def edit(spec, inv):
            inv["all"]["children"]["manager"]["hosts"]["cfgtest-manager"]["cbm_data_volume_id"] = "partitioned-volume"
        proc, _ = cluster.configure(variant(cluster, "partitioned", edit))
        assert_one_line_error(proc, "cfgtest-manager", "partitioned-volume", "gpt partition table",
                              "not formatting", code=2)
        assert {h: s["changed"] for h, s in summary(proc.stdout).items()} == {h: 0 for h in cluster.containers}
    finally:
        hostimage.remove_block_device(manager, "/dev/vdc")
        sh("losetup", "-d", loop, check=False)
    probe = sh("blkid", "-p", "-o", "export", str(image), check=False).stdout
    assert sh("sfdisk", "-d", str(image)).stdout == table
    assert "PTTYPE=gpt" in probe and not re.search(r"^TYPE=", probe, re.M), probe


def test_port_taken_is_named(cluster):
    manager = cluster.containers[cluster.manager]
    pid = on_host(manager, "python3 -m http.server 11040 >/dev/null 2>&1 & echo $!")
    try:
        def edit(spec, inv):
            spec["db_port"] = 11040
            inv["all"]["vars"]["cbm_db_port"] = 11040
        proc, _ = cluster.configure(variant(cluster, "porttaken", edit))
        assert_one_line_error(proc, "cfgtest-manager", "postgis", "11040", "already taken", code=2)
        # The running database was left alone.
        with cluster.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM survival")
            assert cur.fetchone()[0] == 1000
    finally:
        on_host(manager, f"kill {pid}", check=False)
