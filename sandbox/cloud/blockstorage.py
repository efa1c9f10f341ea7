"""Cinder v3 (microversions up to 3.71): volumes (a sparse file on a loop device each), metadata, volume
types, limits. Attaching is Nova's job (compute.py)."""

from __future__ import annotations

import ast
import subprocess
import uuid

from sandbox.cloud.base import now_us, router
from sandbox.cloud.http import Request, nova_error, paginate, quota_error
from sandbox.cloud.state import Cloud

V = "/volume/v3/{project_id}"
DELETABLE = ("available", "error", "error_restoring", "error_extending", "error_managing")
RESET_STATES = ("available", "in-use", "error", "error_deleting", "error_extending")


def _project(cloud: Cloud, req: Request) -> None:
    if req.params.get("project_id") != cloud.data["project_id"]:
        raise nova_error(404, f"Project {req.params.get('project_id')} could not be found.")


def _volume(cloud: Cloud, req: Request) -> dict:
    _project(cloud, req)
    vol = cloud.data["volumes"].get(req.params["volume_id"])
    if vol is None:
        raise nova_error(404, f"Volume {req.params['volume_id']} could not be found.")
    return vol


def _type(cloud: Cloud, ref: str | None) -> dict:
    types = cloud.data["volume_types"]
    if ref is None:
        return next(t for t in types.values() if t["name"] == "ssd")
    for t in types.values():
        if ref in (t["id"], t["name"]):
            return t
    raise nova_error(404, f"Volume type with name {ref} could not be found.")


def volume_view(cloud: Cloud, req: Request, vol: dict) -> dict:
    version = req.microversion("volume", "3.0")
    vtype = cloud.data["volume_types"].get(vol["volume_type_id"], {"name": None})
    out = {"id": vol["id"], "name": vol["name"], "description": vol["description"], "size": vol["size"],
           "status": vol["status"], "volume_type": vtype["name"], "metadata": dict(vol["metadata"]),
           "attachments": [dict(a) for a in vol["attachments"]], "availability_zone": "nova",
           "bootable": "false", "encrypted": False, "multiattach": False, "created_at": vol["created_at"],
           "updated_at": vol["updated_at"], "user_id": cloud.data["user_id"],
           "os-vol-tenant-attr:tenant_id": cloud.data["project_id"], "snapshot_id": None, "source_volid": None,
           "replication_status": None, "consistencygroup_id": None, "migration_status": None,
           "links": [{"rel": "self", "href": f"{req.base_url}/volume/v3/{cloud.data['project_id']}/volumes/{vol['id']}"}]}
    if version >= (3, 13):
        out["group_id"] = None
    if version >= (3, 21):
        out["provider_id"] = None
    if version >= (3, 48):
        out.update(service_uuid=None, shared_targets=False)
    if version >= (3, 63):
        out["volume_type_id"] = vol["volume_type_id"]
    if version >= (3, 65):
        out["consumes_quota"] = True
    return out


def _metadata_filter(raw: str):
    """Cinder literal_evals the value and ignores the filter unless it is a dict: then nothing matches."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def _list(cloud: Cloud, req: Request) -> tuple[list[dict], dict]:
    _project(cloud, req)
    with cloud.lock:
        items = sorted(cloud.data["volumes"].values(), key=lambda v: (v["created_at"], v["seq"]), reverse=True)
        for key in ("name", "status", "availability_zone"):
            if req.q(key) is not None:
                items = [v for v in items if str(v.get(key, "nova")) == req.q(key)]
        if req.q("metadata") is not None:
            wanted = _metadata_filter(req.q("metadata"))
            if wanted is None:
                items = []
            else:
                items = [v for v in items if all(v["metadata"].get(str(k)) == str(val) for k, val in wanted.items())]
        return paginate(req, items, "volumes", max_limit=cloud.data["page_size"])


@router.route("GET", V + "/volumes", kind="volume.list", service="block-storage")
def list_volumes(cloud: Cloud, req: Request):
    page, extra = _list(cloud, req)
    return 200, {"volumes": [{"id": v["id"], "name": v["name"], "links": volume_view(cloud, req, v)["links"]}
                             for v in page], **extra}


@router.route("GET", V + "/volumes/detail", kind="volume.list", service="block-storage")
def list_volumes_detail(cloud: Cloud, req: Request):
    page, extra = _list(cloud, req)
    with cloud.lock:
        return 200, {"volumes": [volume_view(cloud, req, v) for v in page], **extra}


@router.route("GET", V + "/volumes/{volume_id}", kind="volume.get", service="block-storage")
def get_volume(cloud: Cloud, req: Request):
    with cloud.lock:
        return 200, {"volume": volume_view(cloud, req, _volume(cloud, req))}


def _check_meta(meta) -> dict:
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255
                                             and len(v) <= 255 for k, v in meta.items()):
        raise nova_error(400, "Invalid input for field/attribute metadata.")
    return meta


@router.route("POST", V + "/volumes", kind="volume.create", service="block-storage")
def create_volume(cloud: Cloud, req: Request):
    _project(cloud, req)
    body = (req.body or {}).get("volume")
    if not isinstance(body, dict):
        raise nova_error(400, "Missing required element 'volume' in request body.")
    try:
        size = int(body.get("size"))
        if size < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise nova_error(400, f"Invalid input for field/attribute size. Value: {body.get('size')}. "
                              "The size must be an integer greater than 0") from None
    for unsupported in ("snapshot_id", "source_volid", "imageRef", "backup_id"):
        if body.get(unsupported):
            raise nova_error(400, f"The sandbox only creates blank volumes ({unsupported} is not supported).")
    metadata = _check_meta(body.get("metadata") or {})
    with cloud.lock:
        vtype = _type(cloud, body.get("volume_type"))
        vols = cloud.data["volumes"].values()
        q = cloud.data["quotas"]
        if len(vols) + 1 > q["volumes"]:
            raise quota_error("block-storage", "volumes", len(vols), q["volumes"])
        used_gb = sum(v["size"] for v in vols)
        if used_gb + size > q["gigabytes"]:
            raise nova_error(413, "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
                                  f"gigabytes quota. Requested {size}G, quota is {q['gigabytes']}G and {used_gb}G "
                                  "has been consumed.")
        vol = {"id": str(uuid.uuid4()), "name": body.get("name"), "description": body.get("description"),
               "size": size, "status": "creating", "volume_type_id": vtype["id"], "metadata": dict(metadata),
               "attachments": [], "created_at": now_us(), "updated_at": None, "loop": None, "major": None,
               "minor": None, "seq": 1 + max([v["seq"] for v in vols] or [0])}
        cloud.data["volumes"][vol["id"]] = vol
        cloud.save()
        out = volume_view(cloud, req, vol)
    cloud.background(f"create volume {vol['id']}", _make, cloud, vol["id"], size)
    return 202, {"volume": out}


def _make(cloud: Cloud, volume_id: str, size: int) -> None:
    try:
        if cloud.faults.take_event("volume.build"):
            raise RuntimeError("injected")
        dev, major, minor = cloud.backend.create_volume(volume_id, size)
        status = "available"
    except Exception:
        dev = major = minor = None
        status = "error"
    with cloud.lock:
        vol = cloud.data["volumes"].get(volume_id)
        if vol is None:
            return
        vol.update(status=status, loop=dev, major=major, minor=minor, updated_at=now_us())
        cloud.save()


@router.route("PUT", V + "/volumes/{volume_id}", kind="volume.update", service="block-storage")
def update_volume(cloud: Cloud, req: Request):
    body = (req.body or {}).get("volume") or {}
    with cloud.lock:
        vol = _volume(cloud, req)
        for key in ("name", "description"):
            if key in body:
                vol[key] = body[key]
        if "metadata" in body:
            vol["metadata"] = dict(_check_meta(body["metadata"]))
        vol["updated_at"] = now_us()
        cloud.save()
        return 200, {"volume": volume_view(cloud, req, vol)}


@router.route("DELETE", V + "/volumes/{volume_id}", kind="volume.delete", service="block-storage")
def delete_volume(cloud: Cloud, req: Request):
    with cloud.lock:
        vol = _volume(cloud, req)
        if vol["status"] not in DELETABLE or vol["attachments"]:
            raise nova_error(400, "Invalid volume: Volume status must be available or error or error_restoring or "
                                  "error_extending or error_managing and must not be migrating, attached, belong "
                                  "to a group, have snapshots or be disassociated from snapshots after volume "
                                  "transfer.")
        vol.update(status="deleting", updated_at=now_us())
        cloud.save()
    cloud.background(f"delete volume {vol['id']}", _remove, cloud, vol["id"])
    return 202, None


def _remove(cloud: Cloud, volume_id: str) -> None:
    try:
        cloud.backend.delete_volume(volume_id)
        ok = True
    except Exception:
        ok = False
    with cloud.lock:
        if ok:
            cloud.data["volumes"].pop(volume_id, None)
        elif volume_id in cloud.data["volumes"]:
            cloud.data["volumes"][volume_id]["status"] = "error_deleting"
        cloud.save()


@router.route("POST", V + "/volumes/{volume_id}/action", kind="volume.action", service="block-storage")
def volume_action(cloud: Cloud, req: Request):
    body = req.body or {}
    action = next(iter(body), None)
    with cloud.lock:
        vol = _volume(cloud, req)
        if action == "os-extend":
            new_size = int((body[action] or {}).get("new_size", 0))
            if vol["status"] != "available":
                raise nova_error(400, f"Invalid volume: Volume {vol['id']} status must be 'available' to extend.")
            if new_size <= vol["size"]:
                raise nova_error(400, f"Invalid input received: New size for extend must be greater than current "
                                      f"size. (current: {vol['size']}, extended: {new_size}).")
            path = cloud.backend.volume_path(vol["id"])
            with open(path, "r+b") as f:
                f.truncate(new_size * 1024 ** 3)
            if vol.get("loop"):
                subprocess.run(["losetup", "-c", vol["loop"]], check=False)
            vol.update(size=new_size, updated_at=now_us())
            cloud.save()
            return 202, None
        if action == "os-reset_status":   # an admin action in Cinder; here: how tests put a volume in error
            status = (body[action] or {}).get("status")
            if status not in RESET_STATES:
                raise nova_error(400, f"Invalid input received: status {status!r} is not one of {RESET_STATES}.")
            vol.update(status=status, updated_at=now_us())
            cloud.save()
            return 202, None
    raise nova_error(400, f"The sandbox does not support the volume action {action!r}.")


# -- metadata ----------------------------------------------------------------------------------
@router.route("GET", V + "/volumes/{volume_id}/metadata", kind="volume.metadata", service="block-storage")
def get_metadata(cloud: Cloud, req: Request):
    return 200, {"metadata": dict(_volume(cloud, req)["metadata"])}


@router.route("POST", V + "/volumes/{volume_id}/metadata", kind="volume.metadata", service="block-storage")
def merge_metadata(cloud: Cloud, req: Request):
    meta = _check_meta((req.body or {}).get("metadata"))
    with cloud.lock:
        vol = _volume(cloud, req)
        vol["metadata"].update(meta)
        cloud.save()
        return 200, {"metadata": dict(vol["metadata"])}


@router.route("PUT", V + "/volumes/{volume_id}/metadata", kind="volume.metadata", service="block-storage")
def replace_metadata(cloud: Cloud, req: Request):
    meta = _check_meta((req.body or {}).get("metadata"))
    with cloud.lock:
        vol = _volume(cloud, req)
        vol["metadata"] = dict(meta)
        cloud.save()
        return 200, {"metadata": dict(vol["metadata"])}


@router.route("GET", V + "/volumes/{volume_id}/metadata/{key}", kind="volume.metadata", service="block-storage")
def get_meta_item(cloud: Cloud, req: Request):
    vol = _volume(cloud, req)
    if req.params["key"] not in vol["metadata"]:
        raise nova_error(404, f"Volume {vol['id']} has no metadata with key {req.params['key']}.")
    return 200, {"meta": {req.params["key"]: vol["metadata"][req.params["key"]]}}


@router.route("PUT", V + "/volumes/{volume_id}/metadata/{key}", kind="volume.metadata", service="block-storage")
def put_meta_item(cloud: Cloud, req: Request):
    meta = _check_meta((req.body or {}).get("meta"))
    if list(meta) != [req.params["key"]]:
        raise nova_error(400, "Request body and URI mismatch")
    with cloud.lock:
        _volume(cloud, req)["metadata"].update(meta)
        cloud.save()
    return 200, {"meta": meta}


@router.route("DELETE", V + "/volumes/{volume_id}/metadata/{key}", kind="volume.metadata",
              service="block-storage")
def delete_meta_item(cloud: Cloud, req: Request):
    with cloud.lock:
        vol = _volume(cloud, req)
        if vol["metadata"].pop(req.params["key"], None) is None:
            raise nova_error(404, f"Volume {vol['id']} has no metadata with key {req.params['key']}.")
        cloud.save()
    return 200, None


# -- types, limits, zones ----------------------------------------------------------------------
def type_view(t: dict) -> dict:
    return {"id": t["id"], "name": t["name"], "description": f"{t['name']} volumes (a sparse file in the sandbox)",
            "is_public": True, "os-volume-type-access:is_public": True, "extra_specs": {}, "qos_specs_id": None}


@router.route("GET", V + "/types", kind="volume_type.list", service="block-storage")
def list_types(cloud: Cloud, req: Request):
    _project(cloud, req)
    return 200, {"volume_types": [type_view(t) for t in cloud.data["volume_types"].values()]}


@router.route("GET", V + "/types/{type_id}", kind="volume_type.get", service="block-storage")
def get_type(cloud: Cloud, req: Request):
    _project(cloud, req)
    ref = req.params["type_id"]
    if ref == "default":
        return 200, {"volume_type": type_view(_type(cloud, None))}
    t = cloud.data["volume_types"].get(ref)
    if t is None:
        raise nova_error(404, f"Volume type {ref} could not be found.")
    return 200, {"volume_type": type_view(t)}


@router.route("GET", V + "/limits", kind="limits.get", service="block-storage")
def limits(cloud: Cloud, req: Request):
    _project(cloud, req)
    q, vols = cloud.data["quotas"], cloud.data["volumes"].values()
    return 200, {"limits": {"rate": [], "absolute": {
        "maxTotalVolumes": q["volumes"], "maxTotalVolumeGigabytes": q["gigabytes"], "maxTotalSnapshots": 0,
        "maxTotalBackups": 0, "maxTotalBackupGigabytes": 0, "totalVolumesUsed": len(vols),
        "totalGigabytesUsed": sum(v["size"] for v in vols), "totalSnapshotsUsed": 0, "totalBackupsUsed": 0,
        "totalBackupGigabytesUsed": 0}}}


@router.route("GET", V + "/os-availability-zone", kind="az.list", service="block-storage")
def zones(cloud: Cloud, req: Request):
    return 200, {"availabilityZoneInfo": [{"zoneName": "nova", "zoneState": {"available": True}}]}
