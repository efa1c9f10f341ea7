"""Nova v2.1 (microversions up to 2.96): flavors, keypairs, servers (a host container each, its security
groups enforced by firewall.py), server tags and metadata, actions (reboot, stop, start, add/remove a
security group), volume attachments (a block device node in the host)."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import subprocess
import tempfile
import uuid
from pathlib import Path

from sandbox.cloud import firewall, hostimage, network
from sandbox.cloud.base import now, router
from sandbox.cloud.http import Request, nova_error, paginate
from sandbox.cloud.state import Cloud

log = logging.getLogger(__name__)
C = "/compute/v2.1"
KEYPAIR_NAME = re.compile(r"^[A-Za-z0-9 _.@-]{1,255}$")
DEVICE_LETTERS = "bcdefghijklmnopqrstuvwxyz"


def mv(req: Request) -> tuple[int, int]:
    version = req.microversion("compute", "2.1")
    if version < (2, 1) or version > (2, 96):
        raise nova_error(406, f"Version {version[0]}.{version[1]} is not supported by the API. Minimum is 2.1 "
                              "and maximum is 2.96.")
    return version


def _link(req: Request, kind: str, id_: str) -> list[dict]:
    return [{"rel": "self", "href": f"{req.base_url}{C}/{kind}/{id_}"},
            {"rel": "bookmark", "href": f"{req.base_url}/compute/{kind}/{id_}"}]


# -- flavors -----------------------------------------------------------------------------------
def flavor_view(req: Request, f: dict, detail: bool = True) -> dict:
    out = {"id": f["id"], "name": f["name"], "links": _link(req, "flavors", f["id"])}
    if mv(req) >= (2, 55):
        out["description"] = None
    if not detail:
        return out
    out.update({"ram": f["ram"], "vcpus": f["vcpus"], "disk": f["disk"], "OS-FLV-EXT-DATA:ephemeral": 0,
                "OS-FLV-DISABLED:disabled": False, "swap": 0 if mv(req) >= (2, 75) else "", "rxtx_factor": 1.0,
                "os-flavor-access:is_public": True})
    if mv(req) >= (2, 61):
        out["extra_specs"] = {}
    return out


@router.route("GET", C + "/flavors", kind="flavor.list", service="compute")
def list_flavors(cloud: Cloud, req: Request):
    items = sorted(cloud.data["flavors"].values(), key=lambda f: (f["ram"], f["name"]))
    page, extra = paginate(req, items, "flavors", max_limit=cloud.data["page_size"])
    return 200, {"flavors": [flavor_view(req, f, detail=False) for f in page], **extra}


@router.route("GET", C + "/flavors/detail", kind="flavor.list", service="compute")
def list_flavors_detail(cloud: Cloud, req: Request):
    items = sorted(cloud.data["flavors"].values(), key=lambda f: (f["ram"], f["name"]))
    if req.q("minRam"):
        items = [f for f in items if f["ram"] >= int(req.q("minRam"))]
    page, extra = paginate(req, items, "flavors", max_limit=cloud.data["page_size"])
    return 200, {"flavors": [flavor_view(req, f) for f in page], **extra}


def _flavor(cloud: Cloud, flavor_id: str) -> dict:
    f = cloud.data["flavors"].get(flavor_id)
    if f is None:
        raise nova_error(404, f"Flavor {flavor_id} could not be found.")
    return f


@router.route("GET", C + "/flavors/{flavor_id}", kind="flavor.get", service="compute")
def get_flavor(cloud: Cloud, req: Request):
    return 200, {"flavor": flavor_view(req, _flavor(cloud, req.params["flavor_id"]))}


@router.route("GET", C + "/flavors/{flavor_id}/os-extra_specs", kind="flavor.get", service="compute")
def flavor_specs(cloud: Cloud, req: Request):
    _flavor(cloud, req.params["flavor_id"])
    return 200, {"extra_specs": {}}


# -- keypairs ----------------------------------------------------------------------------------
def fingerprint(public_key: str) -> str:
    parts = public_key.split()
    try:
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
            raise ValueError
        digest = hashlib.md5(base64.b64decode(parts[1], validate=True)).hexdigest()
    except ValueError:
        raise nova_error(400, "Keypair data is invalid: failed to generate fingerprint") from None
    return ":".join(digest[i:i + 2] for i in range(0, 32, 2))


def keypair_view(req: Request, kp: dict, full: bool = False) -> dict:
    out = {"name": kp["name"], "public_key": kp["public_key"], "fingerprint": kp["fingerprint"]}
    if mv(req) >= (2, 2):
        out["type"] = kp.get("type", "ssh")
    if mv(req) >= (2, 10):
        out["user_id"] = kp["user_id"]
    if full:
        out.update({"id": kp["seq"], "created_at": kp["created_at"], "updated_at": None, "deleted": False,
                    "deleted_at": None})
    return out


@router.route("GET", C + "/os-keypairs", kind="keypair.list", service="compute")
def list_keypairs(cloud: Cloud, req: Request):
    items = sorted(cloud.data["keypairs"].values(), key=lambda k: k["name"])
    page, extra = paginate(req, items, "keypairs", id_key="name", max_limit=cloud.data["page_size"])
    return 200, {"keypairs": [{"keypair": keypair_view(req, k)} for k in page], **extra}


@router.route("GET", C + "/os-keypairs/{name}", kind="keypair.get", service="compute")
def get_keypair(cloud: Cloud, req: Request):
    kp = cloud.data["keypairs"].get(req.params["name"])
    if kp is None:
        raise nova_error(404, f"Keypair {req.params['name']} not found for user {cloud.data['user_id']}")
    return 200, {"keypair": keypair_view(req, kp, full=True)}


@router.route("POST", C + "/os-keypairs", kind="keypair.create", service="compute")
def create_keypair(cloud: Cloud, req: Request):
    body = (req.body or {}).get("keypair")
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise nova_error(400, "Invalid input for field/attribute keypair. 'name' is a required property")
    name = body["name"]
    if not KEYPAIR_NAME.match(name):
        raise nova_error(400, "Keypair data is invalid: Keypair name contains unsafe characters")
    public_key = body.get("public_key")
    private_key = None
    if public_key is None:
        if mv(req) >= (2, 92):
            raise nova_error(400, "Invalid input for field/attribute keypair. 'public_key' is a required property")
        public_key, private_key = _generate_key(name)
    fp = fingerprint(public_key)
    with cloud.lock:
        if name in cloud.data["keypairs"]:
            raise nova_error(409, f"Key pair '{name}' already exists.")
        cloud.quota_check("compute", "key_pairs", len(cloud.data["keypairs"]))
        kp = {"name": name, "public_key": public_key.strip(), "fingerprint": fp, "type": body.get("type", "ssh"),
              "user_id": cloud.data["user_id"], "created_at": now(),
              "seq": 1 + max([k["seq"] for k in cloud.data["keypairs"].values()] or [0])}
        cloud.data["keypairs"][name] = kp
        cloud.save()
    out = keypair_view(req, kp)
    if private_key:
        out["private_key"] = private_key
    return (201 if mv(req) >= (2, 2) else 200), {"keypair": out}


def _generate_key(name: str) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="cbm-sandbox-kp-") as tmp:
        path = Path(tmp) / "key"
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", name, "-f", str(path)],
                       check=True, capture_output=True)
        return path.with_suffix(".pub").read_text().strip(), path.read_text()


@router.route("DELETE", C + "/os-keypairs/{name}", kind="keypair.delete", service="compute")
def delete_keypair(cloud: Cloud, req: Request):
    with cloud.lock:
        if cloud.data["keypairs"].pop(req.params["name"], None) is None:
            raise nova_error(404, f"Keypair {req.params['name']} not found for user {cloud.data['user_id']}")
        cloud.save()
    return (204 if mv(req) >= (2, 2) else 202), None


# -- servers -----------------------------------------------------------------------------------
def _server(cloud: Cloud, server_id: str) -> dict:
    srv = cloud.data["servers"].get(server_id)
    if srv is None:
        raise nova_error(404, f"Instance {server_id} could not be found.")
    return srv


def addresses(cloud: Cloud, srv: dict) -> dict:
    out: dict[str, list] = {}
    for pid in srv["port_ids"]:
        port = cloud.data["ports"].get(pid)
        if port is None:
            continue
        name = cloud.data["networks"].get(port["network_id"], {}).get("name", port["network_id"])
        entries = out.setdefault(name, [])
        for ip in port["fixed_ips"]:
            entries.append({"version": 4, "addr": ip["ip_address"], "OS-EXT-IPS:type": "fixed",
                            "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]})
        for fip in cloud.data["floatingips"].values():
            if fip.get("port_id") == pid:
                entries.append({"version": 4, "addr": fip["floating_ip_address"], "OS-EXT-IPS:type": "floating",
                                "OS-EXT-IPS-MAC:mac_addr": port["mac_address"]})
    return out


def server_groups_names(cloud: Cloud, srv: dict) -> list[dict]:
    names = []
    for pid in srv["port_ids"]:
        port = cloud.data["ports"].get(pid)
        for sg_id in (port or {}).get("security_groups", []):
            sg = cloud.data["security_groups"].get(sg_id)
            if sg and {"name": sg["name"]} not in names:
                names.append({"name": sg["name"]})
    return names


def server_view(cloud: Cloud, req: Request, srv: dict) -> dict:
    version = mv(req)
    flavor = cloud.data["flavors"].get(srv["flavor_id"], {"id": srv["flavor_id"], "name": "?", "vcpus": 0,
                                                          "ram": 0, "disk": 0})
    if version >= (2, 47):
        flavor_out = {"vcpus": flavor["vcpus"], "ram": flavor["ram"], "disk": flavor["disk"], "ephemeral": 0,
                      "swap": 0, "original_name": flavor["name"], "extra_specs": {}}
    else:
        flavor_out = {"id": flavor["id"], "links": [{"rel": "bookmark",
                                                     "href": f"{req.base_url}/compute/flavors/{flavor['id']}"}]}
    out = {
        "id": srv["id"], "name": srv["name"], "status": srv["status"], "tenant_id": cloud.data["project_id"],
        "user_id": cloud.data["user_id"], "metadata": dict(srv["metadata"]),
        "hostId": hashlib.sha224(cloud.data["project_id"].encode()).hexdigest(),
        "image": {"id": srv["image_id"], "links": [{"rel": "bookmark",
                                                    "href": f"{req.base_url}/compute/images/{srv['image_id']}"}]},
        "flavor": flavor_out, "created": srv["created"], "updated": srv["updated"],
        "addresses": addresses(cloud, srv), "accessIPv4": "", "accessIPv6": "",
        "links": _link(req, "servers", srv["id"]), "OS-DCF:diskConfig": "MANUAL",
        "progress": 0 if srv["status"] != "ACTIVE" else 100, "OS-EXT-AZ:availability_zone": "nova",
        "config_drive": "", "key_name": srv["key_name"], "OS-SRV-USG:launched_at": srv.get("launched_at"),
        "OS-SRV-USG:terminated_at": None, "security_groups": server_groups_names(cloud, srv),
        "OS-EXT-STS:task_state": srv["task_state"], "OS-EXT-STS:vm_state": srv["vm_state"],
        "OS-EXT-STS:power_state": srv["power_state"],
        "os-extended-volumes:volumes_attached": [{"id": a["volume_id"], "delete_on_termination": False}
                                                 for a in srv["attachments"]],
        "locked": False, "description": srv.get("description"),
    }
    if version >= (2, 26):
        out["tags"] = list(srv["tags"])
    if version >= (2, 73):
        out["locked_reason"] = None
    if version >= (2, 71):
        out["server_groups"] = []
    if version >= (2, 63):
        out["trusted_image_certificates"] = None
    if version >= (2, 90):
        out["OS-EXT-SRV-ATTR:hostname"] = srv["hostname"]
    if version >= (2, 96):
        out["pinned_availability_zone"] = None
    if srv["status"] == "ERROR" and srv.get("fault"):
        out["fault"] = srv["fault"]
    return out


def _tag_filter(req: Request, items: list[dict]) -> list[dict]:
    tags, any_tags = set(req.qlist("tags")), set(req.qlist("tags-any"))
    not_tags, not_any = set(req.qlist("not-tags")), set(req.qlist("not-tags-any"))
    if tags:
        items = [s for s in items if tags <= set(s["tags"])]
    if any_tags:
        items = [s for s in items if any_tags & set(s["tags"])]
    if not_tags:
        items = [s for s in items if not not_tags <= set(s["tags"])]
    if not_any:
        items = [s for s in items if not not_any & set(s["tags"])]
    return items


def _list_servers(cloud: Cloud, req: Request) -> tuple[list[dict], dict]:
    with cloud.lock:
        items = sorted(cloud.data["servers"].values(), key=lambda s: (s["created"], s["seq"]), reverse=True)
        if req.q("name"):
            try:
                pattern = re.compile(req.q("name"))
            except re.error:
                raise nova_error(400, f"Invalid regular expression {req.q('name')!r}") from None
            items = [s for s in items if pattern.search(s["name"])]
        if req.q("status"):
            items = [s for s in items if s["status"].lower() == req.q("status").lower()]
        for key, field in (("flavor", "flavor_id"), ("image", "image_id"), ("uuid", "id")):
            if req.q(key):
                items = [s for s in items if s[field] == req.q(key)]
        if req.q("ip"):
            pattern = re.compile(req.q("ip"))
            items = [s for s in items if any(pattern.search(a["addr"]) for addrs in addresses(cloud, s).values()
                                             for a in addrs)]
        if req.query.keys() & {"tags", "tags-any", "not-tags", "not-tags-any"} and mv(req) >= (2, 26):
            items = _tag_filter(req, items)
        page, extra = paginate(req, items, "servers", max_limit=cloud.data["page_size"])
        return page, extra


@router.route("GET", C + "/servers", kind="server.list", service="compute")
def list_servers(cloud: Cloud, req: Request):
    page, extra = _list_servers(cloud, req)
    return 200, {"servers": [{"id": s["id"], "name": s["name"], "links": _link(req, "servers", s["id"])}
                             for s in page], **extra}


@router.route("GET", C + "/servers/detail", kind="server.list", service="compute")
def list_servers_detail(cloud: Cloud, req: Request):
    page, extra = _list_servers(cloud, req)
    with cloud.lock:
        return 200, {"servers": [server_view(cloud, req, s) for s in page], **extra}


@router.route("GET", C + "/servers/{server_id}", kind="server.get", service="compute")
def get_server(cloud: Cloud, req: Request):
    with cloud.lock:
        return 200, {"server": server_view(cloud, req, _server(cloud, req.params["server_id"]))}


def _ref(value) -> str:
    """flavorRef/imageRef may be an id or a link ending in the id."""
    return str(value or "").rstrip("/").rsplit("/", 1)[-1]


def _resolve_groups(cloud: Cloud, groups) -> list[str]:
    ids = []
    for g in groups:
        ref = g.get("name") if isinstance(g, dict) else None
        if not ref:
            raise nova_error(400, "Invalid input for field/attribute security_groups.")
        matches = [s for s in cloud.data["security_groups"].values() if ref in (s["id"], s["name"])]
        if not matches:
            raise nova_error(400, f"Security group {ref} not found for project {cloud.data['project_id']}.")
        if len(matches) > 1:
            raise nova_error(409, f"Multiple security groups found matching '{ref}'. Use an ID to be more "
                                  "specific.")
        if matches[0]["id"] not in ids:
            ids.append(matches[0]["id"])
    return ids


def _resolve_networks(cloud: Cloud, nets) -> list[tuple[str, str | None, str | None]]:
    """[(network id, fixed ip, existing port id)]"""
    if nets in (None, "auto"):
        candidates = [n for n in cloud.data["networks"].values() if not n["router:external"]]
        if len(candidates) != 1:
            raise nova_error(409, "Multiple possible networks found, use a Network ID to be more specific.")
        return [(candidates[0]["id"], None, None)]
    if nets == "none":
        return []
    out = []
    for n in nets if isinstance(nets, list) else []:
        if n.get("port"):
            port = cloud.data["ports"].get(n["port"])
            if port is None:
                raise nova_error(400, f"Port {n['port']} could not be found.")
            if port["device_id"]:
                raise nova_error(409, f"Port {n['port']} is still in use.")
            out.append((port["network_id"], None, port["id"]))
            continue
        net_id = n.get("uuid")
        if net_id not in cloud.data["networks"]:
            raise nova_error(400, f"Network {net_id} could not be found.")
        out.append((net_id, n.get("fixed_ip"), None))
    if not out:
        raise nova_error(400, "Invalid input for field/attribute networks.")
    return out


@router.route("POST", C + "/servers", kind="server.create", service="compute")
def create_server(cloud: Cloud, req: Request):
    version = mv(req)
    body = (req.body or {}).get("server")
    if not isinstance(body, dict):
        raise nova_error(400, "Invalid input for field/attribute server. Value: None. None is not of type 'object'")
    name = body.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise nova_error(400, "Invalid input for field/attribute name.")
    if "tags" in body and version < (2, 52):
        raise nova_error(400, "Invalid input for field/attribute server. Additional properties are not allowed "
                              "('tags' was unexpected)")
    tags = body.get("tags") or []
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise nova_error(400, "Invalid input for field/attribute metadata.")
    with cloud.lock:
        flavor = cloud.data["flavors"].get(_ref(body.get("flavorRef")))
        if flavor is None:
            raise nova_error(400, f"Flavor {_ref(body.get('flavorRef'))} could not be found.")
        image_id = _ref(body.get("imageRef"))
        if image_id not in cloud.data["images"]:
            raise nova_error(400, f"Image {image_id} could not be found.")
        key_name = body.get("key_name")
        if key_name is not None and key_name not in cloud.data["keypairs"]:
            raise nova_error(400, "Invalid key_name provided.")
        groups = _resolve_groups(cloud, body.get("security_groups") or [{"name": "default"}])
        nets = _resolve_networks(cloud, body.get("networks"))
        servers = cloud.data["servers"].values()
        q = cloud.data["quotas"]
        used = {"instances": len(servers),
                "cores": sum(cloud.data["flavors"].get(s["flavor_id"], {}).get("vcpus", 0) for s in servers),
                "ram": sum(cloud.data["flavors"].get(s["flavor_id"], {}).get("ram", 0) for s in servers)}
        add = {"instances": 1, "cores": flavor["vcpus"], "ram": flavor["ram"]}
        for res in ("instances", "cores", "ram"):
            if used[res] + add[res] > q[res]:
                raise nova_error(403, f"Quota exceeded for {res}: Requested {add[res]}, but already used "
                                      f"{used[res]} of {q[res]} {res}")
        server_id = str(uuid.uuid4())
        hostname = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "server"
        srv = {"id": server_id, "name": name, "status": "BUILD", "vm_state": "building", "task_state": "scheduling",
               "power_state": 0, "created": now(), "updated": now(), "flavor_id": flavor["id"],
               "image_id": image_id, "key_name": key_name, "metadata": dict(metadata), "tags": sorted(set(tags)),
               "port_ids": [], "attachments": [], "hostname": hostname, "description": body.get("description"),
               "container": cloud.backend.container_name(name, server_id), "fault": None,
               "seq": 1 + max([s["seq"] for s in servers] or [0])}
        ports = []
        try:
            for net_id, fixed_ip, port_id in nets:
                if port_id:
                    port = cloud.data["ports"][port_id]
                else:
                    port = network.new_port(cloud, {"network_id": net_id, "security_groups": groups,
                                                    "fixed_ips": [{"ip_address": fixed_ip}] if fixed_ip else []})
                    port["cbm:created_by_nova"] = True
                ports.append(port)
        except Exception as exc:
            for port in ports:
                if port.get("cbm:created_by_nova"):
                    cloud.data["ports"].pop(port["id"], None)
            if getattr(exc, "status", None) == 409 and "Quota" in str(getattr(exc, "body", "")):
                raise nova_error(403, "Maximum number of ports exceeded") from None
            raise
        for port in ports:
            port.update(device_id=server_id, device_owner="compute:nova")
            srv["port_ids"].append(port["id"])
        cloud.data["servers"][server_id] = srv
        firewall.sync(cloud)  # the other hosts: remote-group address sets (this one has no container yet)
        cloud.save()
    cloud.background(f"boot {server_id}", boot_server, cloud, server_id)
    out = {"id": server_id, "links": _link(req, "servers", server_id), "OS-DCF:diskConfig": "MANUAL",
           "security_groups": [{"name": cloud.data["security_groups"][g]["name"]} for g in groups],
           "adminPass": uuid.uuid4().hex[:12]}
    return 202, {"server": out}, {"Location": f"{req.base_url}{C}/servers/{server_id}"}


def _nics_and_mounts(cloud: Cloud, srv: dict):
    nics, mounts = [], []
    for pid in srv["port_ids"]:
        port = cloud.data["ports"][pid]
        net = cloud.data["networks"][port["network_id"]]
        sub = cloud.data["subnets"][port["fixed_ips"][0]["subnet_id"]]
        docker_net = cloud.backend.ensure_network(net["id"], sub["cidr"], sub["cbm:docker_gateway"])
        nics.append((docker_net, port["fixed_ips"][0]["ip_address"]))
        if net.get("cbm:eodata"):
            eodata = Path(cloud.data["eodata"])
            eodata.mkdir(parents=True, exist_ok=True)
            mounts.append((str(eodata), "/eodata", True))
    return nics, mounts


def _set_error(cloud: Cloud, srv: dict, message: str) -> None:
    srv.update(status="ERROR", vm_state="error", task_state=None, power_state=0, updated=now(),
               fault={"code": 500, "message": message[:255], "created": now()})


def boot_server(cloud: Cloud, server_id: str) -> None:
    with cloud.lock:
        srv = cloud.data["servers"].get(server_id)
        if srv is None:
            return
        srv.update(task_state="spawning")
        key = cloud.data["keypairs"].get(srv["key_name"] or "")
        try:
            nics, mounts = _nics_and_mounts(cloud, srv)
        except Exception as exc:
            _set_error(cloud, srv, f"No valid host was found. {exc}")
            cloud.save()
            return
        container, hostname = srv["container"], srv["hostname"]
        rules = firewall.ruleset(cloud, srv)
    problem = None
    if not nics:
        problem = "The sandbox cannot boot a server without a network."
    elif cloud.faults.take_event("server.boot"):
        problem = f"No valid host was found. There are not enough hosts available. (injected for {server_id})"
    if problem:
        with cloud.lock:
            _set_error(cloud, srv, problem)
            cloud.save()
        return
    try:
        cloud.backend.boot(server_id, container, hostname, key["public_key"] if key else "", nics, mounts, rules)
    except Exception as exc:
        with cloud.lock:
            if server_id not in cloud.data["servers"]:
                cloud.backend.remove_container(container)
                return
            _set_error(cloud, srv, f"Build of instance {server_id} aborted: {exc}")
            cloud.save()
        return
    with cloud.lock:
        if server_id not in cloud.data["servers"]:  # deleted while booting
            cloud.backend.remove_container(container)
            return
        for fip in cloud.data["floatingips"].values():
            if fip.get("port_id") in srv["port_ids"]:
                network.connect_fip(cloud, fip)
        for pid in srv["port_ids"]:
            cloud.data["ports"][pid]["status"] = "ACTIVE"
        cloud.firewalls[server_id] = rules
        firewall.sync(cloud)  # a change while it booted
        srv.update(status="ACTIVE", vm_state="active", task_state=None, power_state=1, updated=now(),
                   launched_at=now().replace("Z", ".000000"))
        cloud.save()


@router.route("PUT", C + "/servers/{server_id}", kind="server.update", service="compute")
def update_server(cloud: Cloud, req: Request):
    body = (req.body or {}).get("server") or {}
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        if "name" in body:
            srv["name"] = body["name"]
        if "description" in body:
            srv["description"] = body["description"]
        srv["updated"] = now()
        cloud.save()
        return 200, {"server": server_view(cloud, req, srv)}


@router.route("DELETE", C + "/servers/{server_id}", kind="server.delete", service="compute")
def delete_server(cloud: Cloud, req: Request):
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        srv.update(task_state="deleting", updated=now())
        cloud.save()
    cloud.background(f"delete {srv['id']}", _destroy, cloud, srv["id"])
    return 204, None


def _destroy(cloud: Cloud, server_id: str) -> None:
    with cloud.lock:
        srv = cloud.data["servers"].get(server_id)
        if srv is None:
            return
        container = srv["container"]
    cloud.backend.remove_container(container)
    with cloud.lock:
        for att in srv["attachments"]:
            vol = cloud.data["volumes"].get(att["volume_id"])
            if vol:
                vol["attachments"] = [a for a in vol["attachments"] if a["server_id"] != server_id]
                vol.update(status="available" if not vol["attachments"] else "in-use", updated_at=now())
        srv["container"] = None  # nothing left to disconnect
        for pid in list(srv["port_ids"]):
            port = cloud.data["ports"].get(pid)
            if port is None:
                continue
            if port.get("cbm:created_by_nova"):
                network.delete_port(cloud, port)
            else:
                port.update(device_id="", device_owner="", status="DOWN")
        cloud.data["servers"].pop(server_id, None)
        firewall.sync(cloud)
        cloud.save()


# -- actions -----------------------------------------------------------------------------------
@router.route("POST", C + "/servers/{server_id}/action", kind="server.action", service="compute")
def server_action(cloud: Cloud, req: Request):
    body = req.body or {}
    action = next(iter(body), None)
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        if srv["task_state"] is not None and action != "os-getConsoleOutput":
            raise nova_error(409, f"Cannot '{action}' instance {srv['id']} while it is in task_state "
                                  f"{srv['task_state']}")
        if action == "reboot":
            if srv["status"] not in ("ACTIVE", "SHUTOFF"):
                raise nova_error(409, f"Cannot 'reboot' instance {srv['id']} while it is in vm_state "
                                      f"{srv['vm_state']}")
            hard = str((body["reboot"] or {}).get("type", "SOFT")).upper() == "HARD"
            srv.update(status="HARD_REBOOT" if hard else "REBOOT", task_state="rebooting_hard" if hard
                       else "rebooting", updated=now())
            cloud.background(f"reboot {srv['id']}", _power, cloud, srv["id"], "restart")
        elif action == "os-stop":
            if srv["status"] != "ACTIVE":
                raise nova_error(409, f"Cannot 'stop' instance {srv['id']} while it is in vm_state {srv['vm_state']}")
            srv.update(task_state="powering-off", updated=now())
            cloud.background(f"stop {srv['id']}", _power, cloud, srv["id"], "stop")
        elif action == "os-start":
            if srv["status"] != "SHUTOFF":
                raise nova_error(409, f"Cannot 'start' instance {srv['id']} while it is in vm_state "
                                      f"{srv['vm_state']}")
            srv.update(task_state="powering-on", updated=now())
            cloud.background(f"start {srv['id']}", _power, cloud, srv["id"], "start")
        elif action in ("addSecurityGroup", "removeSecurityGroup"):
            group = _resolve_groups(cloud, [body[action] or {}])[0]
            ports = [cloud.data["ports"][p] for p in srv["port_ids"] if p in cloud.data["ports"]]
            if action == "removeSecurityGroup" and not any(group in p["security_groups"] for p in ports):
                raise nova_error(404, f"Security group {body[action].get('name')} not associated with the "
                                      "instance")
            for port in ports:
                groups = [g for g in port["security_groups"] if g != group]
                port["security_groups"] = groups + [group] if action == "addSecurityGroup" else groups
            firewall.sync(cloud)
        elif action == "os-getConsoleOutput":
            lines = (body[action] or {}).get("length")
            logs = subprocess.run(["docker", "logs", "--tail", str(lines or "all"), srv["container"] or "-"],
                                  capture_output=True, text=True) if srv.get("container") else None
            return 200, {"output": (logs.stdout + logs.stderr) if logs else ""}
        else:
            raise nova_error(400, f"The sandbox does not support the server action {action!r}.")
        cloud.save()
    return 202, None


def _power(cloud: Cloud, server_id: str, what: str) -> None:
    with cloud.lock:
        srv = cloud.data["servers"].get(server_id)
        container = srv and srv["container"]
    if not container:
        return
    try:
        getattr(cloud.backend, what)(container)
        ok = True
    except Exception as exc:
        ok, message = False, str(exc)
    with cloud.lock:
        srv = cloud.data["servers"].get(server_id)
        if srv is None:
            return
        if not ok:
            _set_error(cloud, srv, message)
        elif what == "stop":
            srv.update(status="SHUTOFF", vm_state="stopped", task_state=None, power_state=4, updated=now())
        else:
            srv.update(status="ACTIVE", vm_state="active", task_state=None, power_state=1, updated=now())
        cloud.save()


# -- metadata and tags -------------------------------------------------------------------------
def _check_meta(meta) -> dict:
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255
                                             and len(v) <= 255 for k, v in meta.items()):
        raise nova_error(400, "Invalid input for field/attribute metadata.")
    return meta


@router.route("GET", C + "/servers/{server_id}/metadata", kind="server.metadata", service="compute")
def get_metadata(cloud: Cloud, req: Request):
    return 200, {"metadata": dict(_server(cloud, req.params["server_id"])["metadata"])}


@router.route("POST", C + "/servers/{server_id}/metadata", kind="server.metadata", service="compute")
def merge_metadata(cloud: Cloud, req: Request):
    meta = _check_meta((req.body or {}).get("metadata"))
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        srv["metadata"].update(meta)
        srv["updated"] = now()
        cloud.save()
        return 200, {"metadata": dict(srv["metadata"])}


@router.route("PUT", C + "/servers/{server_id}/metadata", kind="server.metadata", service="compute")
def replace_metadata(cloud: Cloud, req: Request):
    meta = _check_meta((req.body or {}).get("metadata"))
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        srv["metadata"] = dict(meta)
        srv["updated"] = now()
        cloud.save()
        return 200, {"metadata": dict(srv["metadata"])}


@router.route("GET", C + "/servers/{server_id}/metadata/{key}", kind="server.metadata", service="compute")
def get_meta_item(cloud: Cloud, req: Request):
    srv = _server(cloud, req.params["server_id"])
    if req.params["key"] not in srv["metadata"]:
        raise nova_error(404, "Metadata item was not found")
    return 200, {"meta": {req.params["key"]: srv["metadata"][req.params["key"]]}}


@router.route("PUT", C + "/servers/{server_id}/metadata/{key}", kind="server.metadata", service="compute")
def put_meta_item(cloud: Cloud, req: Request):
    meta = _check_meta((req.body or {}).get("meta"))
    if list(meta) != [req.params["key"]]:
        raise nova_error(400, "Request body and URI mismatch")
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        srv["metadata"].update(meta)
        cloud.save()
    return 200, {"meta": meta}


@router.route("DELETE", C + "/servers/{server_id}/metadata/{key}", kind="server.metadata", service="compute")
def delete_meta_item(cloud: Cloud, req: Request):
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        if srv["metadata"].pop(req.params["key"], None) is None:
            raise nova_error(404, "Metadata item was not found")
        cloud.save()
    return 204, None


def _tags_allowed(req: Request) -> None:
    if mv(req) < (2, 26):
        raise nova_error(404, "The resource could not be found.")


def _check_tag(tag: str) -> str:
    if not tag or len(tag) > 60 or "," in tag or "/" in tag:
        raise nova_error(400, f"Invalid input for field/attribute tag. Value: {tag}.")
    return tag


@router.route("GET", C + "/servers/{server_id}/tags", kind="server.tags", service="compute")
def get_tags(cloud: Cloud, req: Request):
    _tags_allowed(req)
    return 200, {"tags": list(_server(cloud, req.params["server_id"])["tags"])}


@router.route("PUT", C + "/servers/{server_id}/tags", kind="server.tags", service="compute")
def put_tags(cloud: Cloud, req: Request):
    _tags_allowed(req)
    tags = (req.body or {}).get("tags")
    if not isinstance(tags, list) or len(tags) > 50:
        raise nova_error(400, "Invalid input for field/attribute tags.")
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        srv["tags"] = sorted({_check_tag(t) for t in tags})
        cloud.save()
        return 200, {"tags": list(srv["tags"])}


@router.route("DELETE", C + "/servers/{server_id}/tags", kind="server.tags", service="compute")
def delete_tags(cloud: Cloud, req: Request):
    _tags_allowed(req)
    with cloud.lock:
        _server(cloud, req.params["server_id"])["tags"] = []
        cloud.save()
    return 204, None


@router.route("GET", C + "/servers/{server_id}/tags/{tag}", kind="server.tags", service="compute")
def check_tag(cloud: Cloud, req: Request):
    _tags_allowed(req)
    if req.params["tag"] not in _server(cloud, req.params["server_id"])["tags"]:
        raise nova_error(404, f"Tag '{req.params['tag']}' could not be found")
    return 204, None


@router.route("PUT", C + "/servers/{server_id}/tags/{tag}", kind="server.tags", service="compute")
def add_tag(cloud: Cloud, req: Request):
    _tags_allowed(req)
    tag = _check_tag(req.params["tag"])
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        if tag in srv["tags"]:
            return 204, None
        if len(srv["tags"]) >= 50:
            raise nova_error(400, "The number of tags exceeded the per-server limit 50")
        srv["tags"] = sorted(set(srv["tags"]) | {tag})
        cloud.save()
    return 201, None, {"Location": f"{req.base_url}{C}/servers/{srv['id']}/tags/{tag}"}


@router.route("DELETE", C + "/servers/{server_id}/tags/{tag}", kind="server.tags", service="compute")
def delete_tag(cloud: Cloud, req: Request):
    _tags_allowed(req)
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        if req.params["tag"] not in srv["tags"]:
            raise nova_error(404, f"Tag '{req.params['tag']}' could not be found")
        srv["tags"].remove(req.params["tag"])
        cloud.save()
    return 204, None


@router.route("GET", C + "/servers/{server_id}/ips", kind="server.get", service="compute")
def server_ips(cloud: Cloud, req: Request):
    with cloud.lock:
        return 200, {"addresses": {k: [{"version": a["version"], "addr": a["addr"]} for a in v]
                                   for k, v in addresses(cloud, _server(cloud, req.params["server_id"])).items()}}


# -- volume attachments ------------------------------------------------------------------------
def attachment_view(req: Request, srv_id: str, att: dict) -> dict:
    out = {"volumeId": att["volume_id"], "serverId": srv_id, "device": att["device"], "id": att["volume_id"]}
    version = mv(req)
    if version >= (2, 70):
        out["tag"] = None
    if version >= (2, 79):
        out["delete_on_termination"] = False
    if version >= (2, 89):
        out.update(attachment_id=att["attachment_id"], bdm_uuid=att["bdm_uuid"])
    return out


@router.route("GET", C + "/servers/{server_id}/os-volume_attachments", kind="volume.attachments",
              service="compute")
def list_attachments(cloud: Cloud, req: Request):
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        return 200, {"volumeAttachments": [attachment_view(req, srv["id"], a) for a in srv["attachments"]]}


@router.route("GET", C + "/servers/{server_id}/os-volume_attachments/{volume_id}", kind="volume.attachments",
              service="compute")
def get_attachment(cloud: Cloud, req: Request):
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        for att in srv["attachments"]:
            if att["volume_id"] == req.params["volume_id"]:
                return 200, {"volumeAttachment": attachment_view(req, srv["id"], att)}
    raise nova_error(404, f"Instance {srv['id']} is not attached to volume {req.params['volume_id']}.")


@router.route("POST", C + "/servers/{server_id}/os-volume_attachments", kind="volume.attach", service="compute")
def attach_volume(cloud: Cloud, req: Request):
    body = (req.body or {}).get("volumeAttachment") or {}
    volume_id = body.get("volumeId")
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        if srv["status"] != "ACTIVE" or srv["task_state"] is not None:
            raise nova_error(409, f"Cannot 'attach_volume' instance {srv['id']} while it is in vm_state "
                                  f"{srv['vm_state']}")
        vol = cloud.data["volumes"].get(volume_id or "")
        if vol is None:
            raise nova_error(404, f"Volume {volume_id} could not be found.")
        if vol["status"] != "available":
            raise nova_error(400, f"Invalid volume: volume {volume_id} status must be 'available'. Currently in "
                                  f"'{vol['status']}'")
        used = {a["device"] for a in srv["attachments"]}
        device = next((f"/dev/vd{c}" for c in DEVICE_LETTERS if f"/dev/vd{c}" not in used), None)
        if device is None:
            raise nova_error(400, "No free disk device names for prefix 'vd'")
        att = {"volume_id": vol["id"], "device": device, "attachment_id": str(uuid.uuid4()),
               "bdm_uuid": str(uuid.uuid4()), "server_id": srv["id"], "attached_at": now()}
        srv["attachments"].append(att)
        vol.update(status="attaching", updated_at=now())
        cloud.save()
    cloud.background(f"attach {volume_id}", _do_attach, cloud, srv["id"], att)
    return 200, {"volumeAttachment": attachment_view(req, srv["id"], att)}


def _do_attach(cloud: Cloud, server_id: str, att: dict) -> None:
    with cloud.lock:
        srv = cloud.data["servers"][server_id]
        vol = cloud.data["volumes"][att["volume_id"]]
        container, major, minor = srv["container"], vol["major"], vol["minor"]
    try:
        cloud.backend.attach(container, att["device"], major, minor, serial=att["volume_id"])
        ok = True
    except Exception:
        log.exception("attaching %s to %s failed", att["volume_id"], server_id)
        ok = False
    with cloud.lock:
        vol = cloud.data["volumes"].get(att["volume_id"])
        srv = cloud.data["servers"].get(server_id)
        if vol is None or srv is None:
            return
        if ok:
            vol["attachments"].append({"server_id": server_id, "attachment_id": att["attachment_id"],
                                       "volume_id": vol["id"], "device": att["device"], "host_name": None,
                                       "id": vol["id"], "attached_at": att["attached_at"]})
            vol.update(status="in-use", updated_at=now())
        else:
            srv["attachments"] = [a for a in srv["attachments"] if a["volume_id"] != vol["id"]]
            vol.update(status="available", updated_at=now())
        cloud.save()


@router.route("DELETE", C + "/servers/{server_id}/os-volume_attachments/{volume_id}", kind="volume.detach",
              service="compute")
def detach_volume(cloud: Cloud, req: Request):
    with cloud.lock:
        srv = _server(cloud, req.params["server_id"])
        att = next((a for a in srv["attachments"] if a["volume_id"] == req.params["volume_id"]), None)
        if att is None:
            raise nova_error(404, f"Instance {srv['id']} is not attached to volume {req.params['volume_id']}.")
        vol = cloud.data["volumes"].get(att["volume_id"])
        if vol is not None and vol["status"] != "in-use":
            raise nova_error(400, f"Invalid volume: Volume {vol['id']} status must be 'in-use' to detach. "
                                  f"Currently in '{vol['status']}'")
        if vol is not None:
            vol.update(status="detaching", updated_at=now())
        cloud.save()
    cloud.background(f"detach {att['volume_id']}", _do_detach, cloud, srv["id"], att)
    return 202, None


def _do_detach(cloud: Cloud, server_id: str, att: dict) -> None:
    with cloud.lock:
        container = cloud.data["servers"][server_id]["container"]
    if container:
        cloud.backend.detach(container, att["device"])
    with cloud.lock:
        srv = cloud.data["servers"].get(server_id)
        if srv is not None:
            srv["attachments"] = [a for a in srv["attachments"] if a["volume_id"] != att["volume_id"]]
        vol = cloud.data["volumes"].get(att["volume_id"])
        if vol is not None:
            vol["attachments"] = [a for a in vol["attachments"] if a["server_id"] != server_id]
            vol.update(status="in-use" if vol["attachments"] else "available", updated_at=now())
        cloud.save()


# -- limits and zones --------------------------------------------------------------------------
@router.route("GET", C + "/limits", kind="limits.get", service="compute")
def limits(cloud: Cloud, req: Request):
    q, servers = cloud.data["quotas"], cloud.data["servers"].values()
    flavors = cloud.data["flavors"]
    return 200, {"limits": {"rate": [], "absolute": {
        "maxTotalInstances": q["instances"], "maxTotalCores": q["cores"], "maxTotalRAMSize": q["ram"],
        "maxTotalKeypairs": q["key_pairs"], "maxServerMeta": 128, "maxServerGroups": 10,
        "maxServerGroupMembers": 10, "maxImageMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240,
        "totalInstancesUsed": len(servers),
        "totalCoresUsed": sum(flavors.get(s["flavor_id"], {}).get("vcpus", 0) for s in servers),
        "totalRAMUsed": sum(flavors.get(s["flavor_id"], {}).get("ram", 0) for s in servers),
        "totalServerGroupsUsed": 0}}}


@router.route("GET", C + "/os-availability-zone", kind="az.list", service="compute")
def zones(cloud: Cloud, req: Request):
    return 200, {"availabilityZoneInfo": [{"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}]}


# -- restart -----------------------------------------------------------------------------------
def sync_devices(cloud: Cloud, srv: dict) -> None:
    """Rewrite a host's block-device list (used by its init at boot) and fix the nodes if it runs."""
    if not srv.get("container") or cloud.backend.container_state(srv["container"]) is None:
        return
    lines, links = [], []
    for att in srv["attachments"]:
        vol = cloud.data["volumes"].get(att["volume_id"])
        if vol and vol.get("major") is not None:
            lines.append(f"{att['device']} {vol['major']} {vol['minor']}\n")
            links.append(f"{hostimage.by_id_link(vol['id'])} {att['device']}\n")
    hostimage.write_guest_file(srv["container"], "devices", "".join(lines))
    hostimage.write_guest_file(srv["container"], "links", "".join(links))
    if cloud.backend.container_state(srv["container"]) == "running":
        for att in srv["attachments"]:
            vol = cloud.data["volumes"].get(att["volume_id"])
            if vol and vol.get("major") is not None:
                cloud.backend.attach(srv["container"], att["device"], vol["major"], vol["minor"], serial=vol["id"])


def reconcile_server(cloud: Cloud, srv: dict) -> None:
    """After a restart of the service: finish interrupted work, restart hosts that should run."""
    if srv["task_state"] == "deleting":
        cloud.background(f"delete {srv['id']}", _destroy, cloud, srv["id"])
        return
    state = cloud.backend.container_state(srv["container"]) if srv.get("container") else None
    if srv["status"] == "BUILD":
        cloud.background(f"boot {srv['id']}", boot_server, cloud, srv["id"])
        return
    if srv["status"] in ("ACTIVE", "REBOOT", "HARD_REBOOT"):
        if state is None:
            _set_error(cloud, srv, f"The host container {srv['container']} is gone.")
            return
        if state != "running":
            cloud.backend.start(srv["container"])
        srv.update(status="ACTIVE", vm_state="active", task_state=None, power_state=1)
