"""Who may log in to a deployment's hosts: the deployment's own key plus exactly the spec's
`extra_authorized_keys` (roles/base). A key removed from the spec is revoked by the next `cbm up`; the
deployment's key always stays. On the shared live deployment (conftest.live_deployment)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.docker


def login(dep, key: Path, group: str) -> subprocess.CompletedProcess:
    """`ssh -i key` as the login user to the first host of `group` (workers through the manager, the
    jump made with the deployment's key as Ansible does); only `key` is offered for the host itself."""
    hosts = dep.hosts
    name = sorted(hosts["children"][group]["hosts"])[0]
    address = hosts["children"][group]["hosts"][name]["ansible_host"]
    common = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
              "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
    jump = []
    if group == "workers":
        own = hosts["vars"]["ansible_ssh_private_key_file"]
        jump = ["-o", f"ProxyCommand=ssh -i {own} {' '.join(common)} -W %h:%p "
                      f"eouser@{hosts['vars']['cbm_manager_public_ip']}"]
    return subprocess.run(["ssh", "-i", str(key), *common, *jump, f"eouser@{address}", "true"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(2400)   # run alone, it pays for the session's cold live deployment
def test_a_key_removed_from_the_spec_no_longer_logs_in(live_deployment, tmp_path):
    dep = live_deployment
    key = tmp_path / "support_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "support", "-f", str(key)], check=True)
    original = dep.spec.read_text()
    spec = yaml.safe_load(original)
    assert spec.get("extra_authorized_keys", []) == []
    try:
        for group in ("manager", "workers"):
            assert login(dep, key, group).returncode == 255, "the support key logs in before it is added"

        spec["extra_authorized_keys"] = [Path(f"{key}.pub").read_text().strip()]
        dep.spec.write_text(yaml.safe_dump(spec))
        dep.cbm("up", str(dep.spec))
        for group in ("manager", "workers"):
            proc = login(dep, key, group)
            assert proc.returncode == 0, f"{group}: {proc.stderr}"

        dep.spec.write_text(original)
        dep.cbm("up", str(dep.spec))
        for group in ("manager", "workers"):
            proc = login(dep, key, group)
            assert proc.returncode == 255 and "Permission denied" in proc.stderr, f"{group}: {proc.stderr}"
        # the deployment's own key was never dropped
        assert dep.ssh("manager", 0, "echo ok").strip() == "ok"
        assert dep.ssh("workers", 0, "echo ok").strip() == "ok"
    finally:
        dep.spec.write_text(original)
