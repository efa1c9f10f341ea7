"""The sandbox's own admin endpoints (not OpenStack): fault injection, settings, a status summary.
Every call needs the header X-Sandbox-Admin with the admin secret from state.json."""

from __future__ import annotations

from sandbox.cloud.base import router
from sandbox.cloud.http import ApiError, Fault, Request
from sandbox.cloud.state import Cloud

A = "/__sandbox__"


@router.route("GET", A + "/faults", kind="admin", service="admin")
def list_faults(cloud: Cloud, req: Request):
    return 200, {"faults": cloud.faults.listing()}


@router.route("POST", A + "/faults", kind="admin", service="admin")
def post_fault(cloud: Cloud, req: Request):
    fault = add_fault(cloud, req.body or {})
    return 201, {"fault": dict(vars(fault))}


@router.route("DELETE", A + "/faults", kind="admin", service="admin")
def clear_faults(cloud: Cloud, req: Request):
    cloud.faults.clear()
    return 204, None


@router.route("PUT", A + "/settings", kind="admin", service="admin")
def put_settings(cloud: Cloud, req: Request):
    body = req.body or {}
    with cloud.lock:
        if "page_size" in body:
            cloud.data["page_size"] = int(body["page_size"])
        for key, value in (body.get("quotas") or {}).items():
            if key not in cloud.data["quotas"]:
                raise ApiError(400, {"error": f"unknown quota {key!r}"})
            cloud.data["quotas"][key] = int(value)
        cloud.save()
        return 200, {"page_size": cloud.data["page_size"], "quotas": cloud.data["quotas"]}


@router.route("GET", A + "/status", kind="admin", service="admin")
def status(cloud: Cloud, req: Request):
    d = cloud.data
    with cloud.lock:
        nets = {n["id"]: n["name"] for n in d["networks"].values()}
        servers = []
        for s in d["servers"].values():
            addrs = []
            for pid in s["port_ids"]:
                port = d["ports"].get(pid)
                if port:
                    addrs += [f"{nets.get(port['network_id'])}={ip['ip_address']}" for ip in port["fixed_ips"]]
                    addrs += [f"floating={f['floating_ip_address']}" for f in d["floatingips"].values()
                              if f.get("port_id") == pid]
            servers.append({"id": s["id"], "name": s["name"], "status": s["status"], "container": s["container"],
                            "addresses": addrs})
        volumes = [{"id": v["id"], "name": v["name"], "status": v["status"], "size": v["size"],
                    "loop": v.get("loop"), "attached_to": [a["server_id"] for a in v["attachments"]],
                    "device": [a["device"] for a in v["attachments"]]} for v in d["volumes"].values()]
        fips = [{"id": f["id"], "address": f["floating_ip_address"], "port_id": f["port_id"],
                 "fixed": f["fixed_ip_address"]} for f in d["floatingips"].values()]
        return 200, {"instance": d["instance"], "servers": servers, "volumes": volumes, "floating_ips": fips,
                     "keypairs": sorted(d["keypairs"]), "faults": cloud.faults.listing()}


def add_fault(cloud: Cloud, spec: dict) -> Fault:
    if spec.get("mode") not in ("error", "timeout", "quota"):
        raise ApiError(400, {"error": "mode must be error, timeout or quota"})
    fault = Fault(mode=spec["mode"], count=int(spec.get("count", 1)), kind=spec.get("kind"),
                  method=spec.get("method"), path=spec.get("path"), seconds=float(spec.get("seconds", 120)))
    return cloud.faults.add(fault)
