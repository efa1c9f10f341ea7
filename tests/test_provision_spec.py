"""Deployment specs: the committed examples load, bad specs give one clear line naming the key; the
local state (SSH key) is private; the inventory is one Ansible reads with the right groups."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, assert_one_line_error, run_cbm
from cbm.cli import main as cbm_main
from provision.cloud import ownership, reconcile
from provision.cloud import spec as specs
from provision.hosts import inventory
from provision.hosts.files import DeploymentFiles

EXAMPLE = REPO / "inventories" / "example" / "deployment.yml"
SANDBOX = REPO / "inventories" / "sandbox" / "deployment.yml"


def base_spec() -> dict:
    return yaml.safe_load(SANDBOX.read_text())


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No user clouds.yaml or state leaks in: an empty clouds.yaml and a private state root."""
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text("clouds: {}\n")
    env = {"OS_CLIENT_CONFIG_FILE": str(clouds), "XDG_STATE_HOME": str(tmp_path / "state"),
           "HOME": str(tmp_path / "home")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    return env


def write_spec(tmp_path: Path, data: dict, name: str = "deployment.yml") -> Path:
    folder = tmp_path / "inv"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_committed_examples_load_and_never_open_ports_to_the_world():
    for path in (EXAMPLE, SANDBOX):
        s = specs.load(path)
        assert s.db_port == 11039 and s.ssh_user == "eouser"
        assert s.ingress.ssh, path
        for cidr in (*s.ingress.ssh, *s.ingress.db):
            assert not cidr.endswith("/0"), (path, cidr)
    example = specs.load(EXAMPLE)
    assert example.networks.eodata == "eodata" and example.networks.floating_pool == "external"
    assert example.image == "Ubuntu 22.04 LTS" and example.manager_flavor.startswith("eo2a.")
    assert "jrc" in EXAMPLE.read_text().lower(), "the JRC support key placeholder is documented"
    sandbox = specs.load(SANDBOX)
    assert (sandbox.cloud, sandbox.workers, sandbox.networks.private) == ("cbm-sandbox", 2, "cbm-private")
    assert sandbox.inventory_path == SANDBOX.parent / "hosts.yml"
    assert (sandbox.eodata.source, sandbox.eodata.root) == ("mount", "/eodata")   # the default
    assert example.eodata.source == "s3" and example.eodata.endpoint.startswith("https://")
    assert example.eodata.credentials_file == str(Path("~/.config/cbm/example-s3.yml").expanduser())


def test_s3_keys_file_relative_to_the_spec(tmp_path):
    data = base_spec()
    data["eodata"] = {"source": "s3", "endpoint": "http://10.0.0.1:9000", "credentials_file": "keys/s3.yml"}
    s = specs.parse(data, tmp_path / "deployment.yml")
    assert (s.eodata.endpoint, s.eodata.bucket) == ("http://10.0.0.1:9000", "eodata")
    assert s.eodata.credentials_file == str(tmp_path / "keys" / "s3.yml")


def test_defaults_apply():
    data = base_spec()
    for key in ("db_port", "ssh_user", "prefix", "timeouts", "tags", "extra_authorized_keys"):
        data.pop(key, None)
    s = specs.parse(data, Path("/x/deployment.yml"))
    assert (s.db_port, s.ssh_user, s.prefix, s.wait_timeout) == (11039, "eouser", "cbm-rehearsal", 900)
    assert s.manager_name == "cbm-rehearsal-manager" and s.worker_name(2) == "cbm-rehearsal-worker-2"


@pytest.mark.parametrize("mutate, needles", [
    (lambda d: d.pop("ingress"), ["'ingress'", "required", "no default"]),
    (lambda d: d["ingress"].pop("ssh"), ["'ingress.ssh'", "required"]),
    (lambda d: d["ingress"].pop("db"), ["'ingress.db'", "required"]),
    (lambda d: d["ingress"].update(ssh=["0.0.0.0/0"]), ["'ingress.ssh'", "whole internet"]),
    (lambda d: d["ingress"].update(db=["::/0"]), ["'ingress.db'", "whole internet"]),
    (lambda d: d["ingress"].update(db=["10.1.2.3/8"]), ["'ingress.db'", "not a cidr"]),
    (lambda d: d.update(workers="two"), ["'workers'", "whole number", "'two'"]),
    (lambda d: d.update(workers=-1), ["'workers'", "between 0 and 100"]),
    (lambda d: d.pop("cloud"), ["'cloud'", "required"]),
    (lambda d: d["flavors"].pop("worker"), ["'flavors.worker'", "required"]),
    (lambda d: d.update(volume={"size": "big"}), ["'volume.size'", "whole number"]),
    (lambda d: d.update(workers=0, volume={"size": 2}), ["'volume.size'", "workers: 0", "at least 8"]),
    (lambda d: d["networks"].pop("eodata"), ["'networks.eodata'", "required"]),
    (lambda d: d.update(db_port=2377), ["'db_port'", "swarm"]),
    (lambda d: d.update(colour="blue"), ["'colour'", "unknown key"]),
    (lambda d: d.update(name="Bad Name"), ["'name'", "not valid"]),
    (lambda d: d.update(name="sandbox"), ["'name'", "reserved"]),
    (lambda d: d.update(extra_authorized_keys=["ssh-rsa AAAAnotakey"]), ["'extra_authorized_keys'", "damaged"]),
    (lambda d: d.update(tags=["a,b"]), ["'tags'"]),
    (lambda d: d.update(eodata={"source": "nfs"}), ["'eodata.source'", "use s3 or mount"]),
    (lambda d: d.update(eodata={"source": "s3"}), ["'eodata.endpoint'", "required"]),
    (lambda d: d.update(eodata={"source": "s3", "endpoint": "ftp://x"}), ["'eodata.endpoint'", "https://"]),
    (lambda d: d.update(eodata={"endpoint": "https://x"}), ["'eodata.endpoint'", "source: s3"]),
    (lambda d: d.update(eodata={"source": "mount", "root": "eodata"}), ["'eodata.root'", "absolute"]),
    (lambda d: d.update(eodata={"source": "s3", "endpoint": "x", "bucket": 3}), ["'eodata.bucket'"]),
])
def test_bad_spec_gives_one_line_naming_the_key(isolated, tmp_path, capsys, mutate, needles):
    data = base_spec()
    mutate(data)
    path = write_spec(tmp_path, data)
    # in-process for speed: the same entry point the `cbm` command runs (subprocess cases below)
    code = cbm_main(["plan", str(path)])
    err = capsys.readouterr().err
    assert_one_line_error(subprocess.CompletedProcess([], code, "", err), str(path), *needles, code=2)


def test_unreadable_specs(isolated, tmp_path):
    assert_one_line_error(run_cbm("up", str(tmp_path / "nope.yml")), "nope.yml", "no such", code=2)
    bad = tmp_path / "bad.yml"
    bad.write_text("name: [unclosed\n")
    assert_one_line_error(run_cbm("plan", str(bad)), "bad.yml", "yaml", code=2)
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert_one_line_error(run_cbm("down", "--yes", str(empty)), "empty.yml", "empty", code=2)


def test_unknown_cloud_is_one_line(isolated, tmp_path):
    path = write_spec(tmp_path, {**base_spec(), "cloud": "no-such-cloud"})
    for args in (["plan", str(path)], ["up", str(path)], ["down", "--yes", str(path)]):
        assert_one_line_error(run_cbm(*args), "'cloud'", "no-such-cloud", "not defined", code=2)


def test_unreachable_cloud_is_one_line(isolated, tmp_path):
    Path(isolated["OS_CLIENT_CONFIG_FILE"]).write_text(yaml.safe_dump({"clouds": {"gone": {
        "auth_type": "password", "region_name": "RegionOne",
        "auth": {"auth_url": "http://127.0.0.1:9/identity/v3", "username": "u", "password": "s3cret-pw",
                 "project_name": "p", "user_domain_name": "Default", "project_domain_name": "Default"}}}}))
    path = write_spec(tmp_path, {**base_spec(), "cloud": "gone"})
    err = assert_one_line_error(run_cbm("plan", str(path)), "gone", "cannot reach", code=1)
    assert "s3cret-pw" not in err


def test_ssh_key_is_private_and_stable(isolated):
    public = DeploymentFiles("dk").ensure_ssh_key()
    folder = Path(isolated["XDG_STATE_HOME"]) / "cbm" / "dk"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert public.startswith("ssh-ed25519 ")
    assert DeploymentFiles("dk").ensure_ssh_key() == public
    # ssh-keygen accepts the private key and derives the same public key
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(folder / "id_ed25519")], capture_output=True,
                             text=True, check=True).stdout
    assert ownership.same_key(derived, public)


def test_only_the_last_run_folders_are_kept(isolated):
    files = DeploymentFiles("dk")
    made = [files.new_run_dir(keep=3) for _ in range(5)]
    for i, path in enumerate(made):  # distinct ages, oldest first
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    newest = files.new_run_dir(keep=3)
    assert sorted(p.name for p in (files.root / "runs").iterdir()) == sorted([made[3].name, made[4].name, newest.name])
    assert stat.S_IMODE(newest.stat().st_mode) == 0o700


def test_forget_hosts_drops_only_given_addresses(isolated):
    DeploymentFiles("dk").ensure_ssh_key()
    kh = DeploymentFiles("dk").known_hosts
    kh.write_text("10.0.0.8 ssh-ed25519 AAAA4\n10.0.0.9 ssh-ed25519 AAAA5\n")
    # ssh-keygen -H hashes the names as Debian's HashKnownHosts does; both forms are forgotten
    subprocess.run(["ssh-keygen", "-H", "-f", str(kh)], check=True, capture_output=True)
    kh.with_name("known_hosts.old").unlink()
    assert "10.0.0.8" not in kh.read_text()
    kh.write_text("10.0.0.5 ssh-ed25519 AAAA1\n[10.0.0.6]:2222 ssh-ed25519 AAAA2\n10.0.0.7 ssh-ed25519 AAAA3\n"
                  + kh.read_text())
    DeploymentFiles("dk").forget_hosts({"10.0.0.5", "10.0.0.6", "10.0.0.8"})
    assert sorted(line.split()[-1] for line in kh.read_text().splitlines()) == ["AAAA3", "AAAA5"]
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600


def test_inventory_is_what_ansible_reads(isolated, tmp_path):
    s = specs.parse(base_spec(), write_spec(tmp_path, base_spec()))
    DeploymentFiles(s.name).ensure_ssh_key()
    hosts = [reconcile.Host("cbm-rehearsal-manager", "manager", "10.0.0.10", "id-m"),
             reconcile.Host("cbm-rehearsal-worker-1", "worker", "10.0.0.11", "id-1"),
             reconcile.Host("cbm-rehearsal-worker-2", "worker", "10.0.0.12", "id-2")]
    path = inventory.write(s, hosts, manager_ip="192.0.2.7", data_device="/dev/vdb", volume_id="vol-1")
    assert path == tmp_path / "inv" / "hosts.yml"
    ansible_inventory = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(ansible_inventory), "-i", str(path), "--list"], capture_output=True, text=True,
                         check=True, env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_FAILED": "1"}).stdout
    inv = json.loads(out)
    assert inv["manager"]["hosts"] == ["cbm-rehearsal-manager"]
    assert sorted(inv["workers"]["hosts"]) == ["cbm-rehearsal-worker-1", "cbm-rehearsal-worker-2"]
    m = inv["_meta"]["hostvars"]["cbm-rehearsal-manager"]
    w = inv["_meta"]["hostvars"]["cbm-rehearsal-worker-2"]
    assert (m["ansible_host"], m["cbm_data_volume_id"], m["cbm_db_port"], m["ansible_user"]) == \
        ("192.0.2.7", "vol-1", 11039, "eouser")
    # the key the base role always keeps in authorized_keys (besides the spec's extra keys)
    assert w["cbm_deployment_public_key"] == DeploymentFiles("rehearsal").read_public_key()
    assert (w["ansible_host"], w["private_ip"], w["cbm_deployment"]) == ("10.0.0.12", "10.0.0.12", "rehearsal")
    key = Path(m["ansible_ssh_private_key_file"])
    assert key.parent == Path(isolated["XDG_STATE_HOME"]) / "cbm" / "rehearsal" and key.exists()
    for hv in (m, w):
        assert "StrictHostKeyChecking=accept-new" in hv["ansible_ssh_common_args"]
        assert str(DeploymentFiles("rehearsal").known_hosts) in hv["ansible_ssh_common_args"]
    assert "ProxyCommand" in w["ansible_ssh_common_args"] and "eouser@192.0.2.7" in w["ansible_ssh_common_args"]
    assert "ProxyCommand" not in m["ansible_ssh_common_args"]
