"""A deployment on the sandbox cloud for the tests that need configured hosts (see the
`live_deployment` fixture in conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from conftest import REPO, run_cbm

SANDBOX_SPEC = REPO / "inventories" / "sandbox" / "deployment.yml"
SANDBOX_CONFIGURE = REPO / "inventories" / "sandbox" / "configure.yml"


def generated_products(sandbox) -> dict:
    """The rehearsal's products in the sandbox's /eodata, served by its S3 server: generated once per
    session (sandbox/rehearsal.py), then read back from their listing. The stand-in catalog's features."""
    from sandbox.rehearsal import generate

    listing = Path(sandbox.eodata) / "catalog.json"
    if listing.exists():
        return json.loads(listing.read_text())
    features = generate(Path(sandbox.eodata))
    sandbox.republish_eodata()
    return features


class LiveDeployment:
    """inventories/sandbox/deployment.yml renamed `name` (its own resources, state folder and inventory),
    with `workers` workers when given (else the spec's)."""

    def __init__(self, sandbox, folder: Path, name: str = "live", workers: int | None = None):
        self.sandbox = sandbox
        self.name = name
        data = yaml.safe_load(SANDBOX_SPEC.read_text())
        data.update(name=self.name, prefix=f"cbm-{self.name}", tags=[f"cbm-{self.name}"])
        if workers is not None:
            data["workers"] = workers
        # room on the manager's data volume for the extractor image next to PostGIS's (the continuous mode's
        # job, a deployment without workers); a sparse file in the sandbox
        data["volume"] = {**data["volume"], "size": 8}
        # the database admits nothing outside the deployment (its private network; this machine through the
        # SSH tunnel to the manager): every test on it shows that `ingress.db: []` works end to end
        data["ingress"] = {**data["ingress"], "db": []}
        # products from the sandbox's S3 server, as on CDSE (the rehearsal does the same)
        data["eodata"] = {"source": "s3", "endpoint": sandbox.eodata_endpoint(),
                          "credentials_file": str(sandbox.s3.credentials_file)}
        (folder / self.name).mkdir()
        self.spec = folder / self.name / "deployment.yml"
        self.spec.write_text(yaml.safe_dump(data))
        if SANDBOX_CONFIGURE.exists():
            (folder / self.name / "configure.yml").write_text(SANDBOX_CONFIGURE.read_text())
        self.state_home = folder / "state"
        self.env = {**sandbox.env, "XDG_STATE_HOME": str(self.state_home)}

    @property
    def state(self) -> Path:
        return self.state_home / "cbm" / self.name

    def update_spec(self, **values) -> None:
        """Change keys of the spec (e.g. workers=3: the next `cbm up` scales the deployment)."""
        data = yaml.safe_load(self.spec.read_text())
        data.update(values)
        self.spec.write_text(yaml.safe_dump(data))

    @property
    def hosts(self) -> dict:
        return yaml.safe_load((self.spec.parent / "hosts.yml").read_text())["all"]

    def cbm(self, *args: str, timeout: int = 1800, env: dict | None = None):
        proc = run_cbm(*args, env={**self.env, **(env or {})}, timeout=timeout)
        assert proc.returncode == 0, f"cbm {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc

    def background(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "cbm", *args], env={**os.environ, **self.env, **(env or {})},
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def tunnel(self):
        """The SSH tunnel to the deployment's private database, as cbm makes it (provision/ops/deployment.py:
        through the manager, host key pinned in the deployment's state folder)."""
        from provision.ops import deployment

        saved = os.environ.get("XDG_STATE_HOME")
        os.environ["XDG_STATE_HOME"] = str(self.state_home)   # the deployment's files are found there
        try:
            dep = deployment.load(self.spec)
        finally:
            if saved is None:
                os.environ.pop("XDG_STATE_HOME", None)
            else:
                os.environ["XDG_STATE_HOME"] = saved
        return deployment.tunnel(dep)

    def query(self, sql: str, params=None):
        """SQL on the deployment's PostGIS (as the owner) through the SSH tunnel, with its password file."""
        import psycopg2

        password = (self.state / "db_password").read_text().strip()
        tunnel = self.tunnel()
        with psycopg2.connect(host=tunnel.host, port=tunnel.port, user="postgres", dbname="postgres",
                              password=password, connect_timeout=10) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else None

    def assert_same_rows(self, query: str, expected: list) -> None:
        """The rows of `query` (pid, catalogue reference, band or hist, ...) equal `expected` (sorted). On a
        difference the message says which products and bands lack or have extra rows, with the products'
        statuses and extraction runs, instead of a diff of thousands of values."""
        actual = sorted(self.query(query))
        if actual == expected:
            return
        have, want = Counter(actual), Counter(expected)
        missing, extra = want - have, have - want
        by = lambda rows: sorted(Counter((r[1], r[2] if len(r) > 3 else "hist") for r in rows.elements()).items())
        refs = sorted({r[1] for r in (missing + extra).elements()})
        runs = self.query("SELECT c.reference, c.status, r.res, r.status, r.attempts, r.rows, r.detail"
                          " FROM dias_catalogue c LEFT JOIN extraction_runs r ON r.obsid = c.id"
                          " WHERE c.reference = ANY(%s) ORDER BY 1, 3", (refs,))
        raise AssertionError(f"{sum(missing.values())} rows missing, {sum(extra.values())} extra (of "
                             f"{len(expected)} expected); missing by product and band: {by(missing)[:20]}; extra: "
                             f"{by(extra)[:20]}; those products' status and runs: {runs}")

    def ssh(self, group: str, index: int, command: str, check: bool = True) -> str:
        """Run a command on a host (workers through the manager, as Ansible reaches them)."""
        hosts = self.hosts
        names = sorted(hosts["children"][group]["hosts"])
        key = hosts["vars"]["ansible_ssh_private_key_file"]
        opts = ["-i", key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
        jump = []
        if group == "workers":
            jump = ["-o", f"ProxyCommand=ssh {' '.join(opts)} -W %h:%p eouser@{hosts['vars']['cbm_manager_public_ip']}"]
        address = hosts["children"][group]["hosts"][names[index]]["ansible_host"]
        proc = subprocess.run(["ssh", *opts, *jump, f"eouser@{address}", command], capture_output=True, text=True,
                              timeout=120)
        if check:
            assert proc.returncode == 0, f"{command} on {names[index]}: {proc.stderr}"
        return proc.stdout

    def cloud_leftovers(self) -> list[str]:
        """Names of cloud resources of this deployment still in the sandbox."""
        conn = self.sandbox.connect()
        prefix = f"cbm-{self.name}"
        left = [s.name for s in conn.compute.servers() if s.name.startswith(prefix)]
        left += [v.name for v in conn.block_storage.volumes() if (v.name or "").startswith(prefix)]
        left += [g.name for g in conn.network.security_groups() if g.name.startswith(prefix)]
        left += [k.name for k in conn.compute.keypairs() if k.name.startswith(prefix)]
        return left
