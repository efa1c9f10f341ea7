"""The sandbox cloud as openstacksdk sees it: catalog, find-by-name, error shapes, tags, metadata,
pagination, quotas and injected faults. The real openstacksdk over HTTP; no servers booted here."""

from __future__ import annotations

import uuid

import openstack
import pytest
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as osx

from conftest import assert_one_line_error, run_cbm


@pytest.fixture
def conn(sandbox):
    c = sandbox.connect()
    yield c
    sandbox.clear_faults()
    c.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_catalog_is_preseeded_and_found_by_name(conn):
    assert {"eo1.xsmall", "eo1.medium", "eo2.large", "eo2a.large"} <= {f.name for f in conn.compute.flavors()}
    assert conn.compute.find_flavor("eo1.medium").vcpus == 2
    assert conn.image.find_image("Ubuntu 22.04 LTS").status == "active"
    assert conn.image.find_image("Debian 12") is not None
    ext = conn.network.find_network("external")
    assert ext.is_router_external
    assert conn.network.find_network("eodata") is not None
    private = conn.network.find_network("cbm-private")
    assert [s.name for s in conn.network.subnets(network_id=private.id)] == ["cbm-private-subnet"]
    assert {"ssd", "hdd"} <= {t.name for t in conn.block_storage.types()}
    assert [sg.name for sg in conn.network.security_groups(name="default")] == ["default"]
    assert conn.compute.find_flavor("m1.tiny") is None
    with pytest.raises(osx.NotFoundException, match="could not be found"):
        conn.compute.get_server(str(uuid.uuid4()))


def test_wrong_password_is_refused(sandbox, tmp_path):
    good = sandbox.connect()
    cfg = good.config.config
    bad = openstack.connect(auth_url=cfg["auth"]["auth_url"], username=cfg["auth"]["username"],
                            password="wrong", project_name="demo", user_domain_name="Default",
                            project_domain_name="Default", region_name="RegionOne")
    with pytest.raises((osx.SDKException, ksa.Unauthorized), match="401"):
        list(bad.compute.flavors())


def test_keypair_conflict_and_security_group_rules_and_tags(conn):
    name = unique("kp")
    key = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx3C4Yq8iHGLdSwn9ZpnRZ5HYj0qF7qQ2dX3r0b8t9K test@sandbox")
    kp = conn.compute.create_keypair(name=name, public_key=key)
    assert kp.fingerprint.count(":") == 15
    with pytest.raises(osx.ConflictException, match="already exists"):
        conn.compute.create_keypair(name=name, public_key=key)
    assert conn.compute.find_keypair(name).public_key == key
    conn.compute.delete_keypair(name)
    assert conn.compute.find_keypair(name) is None

    sg = conn.network.create_security_group(name=unique("sg"), description="test")
    assert sorted(r.ether_type for r in conn.network.security_group_rules(security_group_id=sg.id)) == ["IPv4", "IPv6"]
    conn.network.set_tags(sg, ["cbm-owner=t1", "role=db"])
    rule = dict(security_group_id=sg.id, direction="ingress", ethertype="IPv4", protocol="tcp",
                port_range_min=22, port_range_max=22, remote_ip_prefix="192.0.2.0/24")
    created = conn.network.create_security_group_rule(**rule)
    with pytest.raises(osx.ConflictException, match=f"Rule id is {created.id}"):
        conn.network.create_security_group_rule(**rule)
    assert [s.id for s in conn.network.security_groups(tags=["cbm-owner=t1", "role=db"])] == [sg.id]
    assert [s.id for s in conn.network.security_groups(tags="cbm-owner=t1,role=db")] == [sg.id]
    assert sg.id not in [s.id for s in conn.network.security_groups(not_any_tags="role=db")]
    fetched = conn.network.get_security_group(sg.id)
    assert set(fetched.tags) == {"cbm-owner=t1", "role=db"}
    assert any(r["port_range_min"] == 22 for r in fetched.security_group_rules)
    twin = conn.network.create_security_group(name=sg.name)
    with pytest.raises(osx.DuplicateResource):
        conn.network.find_security_group(sg.name)
    conn.network.delete_security_group(twin)
    conn.network.delete_security_group(sg)
    with pytest.raises(osx.NotFoundException) as err:
        conn.network.delete_security_group(sg.id, ignore_missing=False)
    assert err.value.response.json()["NeutronError"]["type"] == "SecurityGroupNotFound"


def test_volume_metadata_round_trips_and_filters_like_cinder(conn):
    vol = conn.block_storage.create_volume(size=1, name=unique("vol"), volume_type="hdd",
                                           metadata={"cbm-owner": "t2", "role": "data"})
    vol = conn.block_storage.wait_for_status(vol, "available", failures=["error"], interval=0.2, wait=60)
    assert vol.volume_type == "hdd" and vol.metadata == {"cbm-owner": "t2", "role": "data"}
    conn.block_storage.set_volume_metadata(vol, extra="1")
    assert conn.block_storage.get_volume(vol.id).metadata["extra"] == "1"
    conn.block_storage.delete_volume_metadata(vol, keys=["extra"])
    assert "extra" not in conn.block_storage.get_volume(vol.id).metadata
    # Cinder evaluates ?metadata= as a dict literal; the SDK's dict form sends only the keys (P4).
    raw = conn.block_storage.get("/volumes/detail?metadata={'cbm-owner':'t2'}").json()["volumes"]
    assert [v["id"] for v in raw] == [vol.id]
    assert conn.block_storage.get("/volumes/detail?metadata=cbm-owner").json()["volumes"] == []
    assert [v.id for v in conn.block_storage.volumes(name=vol.name)] == [vol.id]
    conn.block_storage.delete_volume(vol)
    conn.block_storage.wait_for_delete(vol, interval=0.2, wait=60)
    assert conn.block_storage.find_volume(vol.name) is None


def test_lists_follow_pagination_links(sandbox, conn):
    names = [unique("page") for _ in range(5)]
    groups = [conn.network.create_security_group(name=n) for n in names]
    for g in groups:
        conn.network.set_tags(g, ["paging"])
    sandbox.settings(page_size=2)
    try:
        page = conn.network.get("/security-groups?tags=paging").json()
        assert len(page["security_groups"]) == 2 and page["security_groups_links"][0]["rel"] == "next"
        assert "tags=paging" in page["security_groups_links"][0]["href"]
        assert sorted(g.name for g in conn.network.security_groups(tags=["paging"])) == sorted(names)
        assert len(list(conn.compute.flavors())) >= 4
    finally:
        sandbox.settings(page_size=1000)
        for g in groups:
            conn.network.delete_security_group(g)


def test_injected_faults_fail_the_next_calls_then_clear(sandbox, conn):
    ext = conn.network.find_network("external")
    sandbox.inject("fip.create", mode="error", count=2)
    for _ in range(2):
        with pytest.raises(osx.HttpException) as err:
            conn.network.create_ip(floating_network_id=ext.id)
        assert err.value.status_code == 500
    fip = conn.network.create_ip(floating_network_id=ext.id)
    assert fip.status == "DOWN" and fip.floating_ip_address
    conn.network.delete_ip(fip)

    sandbox.inject("fip.create", mode="quota")
    with pytest.raises(osx.ConflictException) as err:
        conn.network.create_ip(floating_network_id=ext.id)
    assert err.value.response.json()["NeutronError"]["type"] == "OverQuota"
    sandbox.inject("volume.create", mode="quota")
    with pytest.raises(osx.HttpException) as err:
        conn.block_storage.create_volume(size=1, name=unique("q"))
    assert err.value.status_code == 413 and "overLimit" in err.value.response.json()
    sandbox.inject("server.create", mode="quota")
    with pytest.raises(osx.ForbiddenException, match="Quota exceeded"):
        conn.compute.create_server(name=unique("q"), flavorRef="x", imageRef="y")

    sandbox.inject("keypair.list", mode="timeout", seconds=5)
    hasty = sandbox.connect(api_timeout=1)
    with pytest.raises((osx.SDKException, ksa.ConnectionError)) as err:
        list(hasty.compute.keypairs())
    assert "timed out" in str(err.value).lower()
    assert sandbox.faults() == []
    assert isinstance(list(conn.compute.keypairs()), list)


def test_real_quotas_answer_over_limit(sandbox, conn):
    sandbox.settings(quotas={"gigabytes": 3})
    try:
        with pytest.raises(osx.HttpException) as err:
            conn.block_storage.create_volume(size=4, name=unique("big"))
        assert err.value.status_code == 413
        assert "VolumeSizeExceedsAvailableQuota" in err.value.response.json()["overLimit"]["message"]
    finally:
        sandbox.settings(quotas={"gigabytes": 2000})


def test_state_survives_a_restart_of_the_service(sandbox, conn):
    name = unique("persist")
    sg = conn.network.create_security_group(name=name)
    sandbox.stop()
    assert not sandbox.running
    sandbox.start()
    again = sandbox.connect()
    assert again.network.find_security_group(name).id == sg.id
    again.network.delete_security_group(sg)


def test_cli_status_and_bad_input(sandbox):
    proc = run_cbm("sandbox", "status", "--state-dir", str(sandbox.state_dir))
    assert proc.returncode == 0, proc.stderr
    assert "servers" in proc.stdout and "floating IPs" in proc.stdout
    proc = run_cbm("sandbox", "start", "--state-dir", str(sandbox.state_dir.parent / "other"),
                   "--eodata", "/does/not/exist")
    assert_one_line_error(proc, "--eodata", "/does/not/exist", code=2)
    proc = run_cbm("sandbox", "status", "--state-dir", str(sandbox.state_dir.parent / "never"))
    assert proc.returncode == 3 and "not running" in proc.stdout


def test_injected_build_failures_leave_error_states_with_a_fault(sandbox, conn):
    sandbox.inject("server.boot", mode="error")
    net = conn.network.find_network("cbm-private")
    server = conn.compute.create_server(name=unique("err"), flavorRef=conn.compute.find_flavor("eo1.xsmall").id,
                                        imageRef=conn.image.find_image("Debian 12").id, networks=[{"uuid": net.id}])
    with pytest.raises(osx.ResourceFailure):
        conn.compute.wait_for_server(server, interval=0.2, wait=60)
    server = conn.compute.get_server(server.id)
    assert server.status == "ERROR" and "No valid host" in server.fault["message"]
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, interval=0.2, wait=60)
    assert not list(conn.network.ports(device_id=server.id))

    sandbox.inject("volume.build", mode="error")
    vol = conn.block_storage.create_volume(size=1, name=unique("err"))
    with pytest.raises(osx.ResourceFailure):
        conn.block_storage.wait_for_status(vol, "available", failures=["error"], interval=0.2, wait=60)
    conn.block_storage.delete_volume(vol)
    conn.block_storage.wait_for_delete(vol, interval=0.2, wait=60)
