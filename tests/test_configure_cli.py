"""`cbm configure` input checks that need no host: each bad input is one line naming it and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error, run_cbm

SPEC = {
    "name": "cfgcli", "cloud": "cbm-sandbox", "image": "Debian 12",
    "flavors": {"manager": "m1.small", "worker": "m1.small"}, "workers": 1, "volume": {"size": 2},
    "networks": {"private": "p", "eodata": "eodata", "floating_pool": "external"},
    "db_port": 11039, "ingress": {"ssh": ["10.0.0.0/8"], "db": []}, "timeouts": {"wait": 3},
}


@pytest.fixture
def deployment(tmp_path):
    folder = tmp_path / "inventories" / "cfgcli"
    folder.mkdir(parents=True)
    (folder / "deployment.yml").write_text(yaml.safe_dump(SPEC))
    env = {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    return folder, env


def inventory(folder, manager: dict | None):
    # private_ip: where the database listens (cbm configure points its SSH tunnel there)
    hosts = {"cfgcli-manager": {"private_ip": "10.0.0.5", **manager}} if manager is not None else {}
    (folder / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_user": "eouser", "cbm_db_port": 11039, "cbm_deployment": "cfgcli"},
        "children": {"manager": {"hosts": hosts}, "workers": {"hosts": {}}}}}))


def test_without_inventory_says_to_run_up(deployment):
    folder, env = deployment
    proc = run_cbm("configure", str(folder / "deployment.yml"), env=env)
    assert_one_line_error(proc, "hosts.yml", "cbm up", code=2)


def test_inventory_without_manager_is_refused(deployment):
    folder, env = deployment
    inventory(folder, None)
    proc = run_cbm("configure", str(folder / "deployment.yml"), env=env)
    assert_one_line_error(proc, "hosts.yml", "manager", code=2)


def test_bad_extra_variables_file_is_named(deployment):
    folder, env = deployment
    inventory(folder, {"ansible_host": "127.0.0.1"})
    (folder / "configure.yml").write_text("- just\n- a list\n")
    proc = run_cbm("configure", str(folder / "deployment.yml"), env=env)
    assert_one_line_error(proc, "configure.yml", "mapping", code=2)


def test_host_without_ssh_is_named_and_nothing_runs(deployment):
    folder, env = deployment
    inventory(folder, {"ansible_host": "127.0.0.1", "ansible_port": 9})   # discard port: no sshd
    proc = run_cbm("configure", str(folder / "deployment.yml"), env=env)
    assert_one_line_error(proc, "cfgcli-manager", "127.0.0.1", "no SSH answer", code=1)
    assert not (Path(env["XDG_STATE_HOME"]) / "cbm" / "cfgcli" / "runs").exists()
