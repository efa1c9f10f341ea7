"""Keystone v3 (password auth, one project) and the version documents of every service."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sandbox.cloud.base import router
from sandbox.cloud.http import Request, keystone_error
from sandbox.cloud.state import Cloud

COMPUTE_MAX = "2.96"
VOLUME_MAX = "3.71"


def _identity_version(req: Request) -> dict:
    return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{req.base_url}/identity/v3/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}


@router.route("GET", "/identity", kind="discovery", service="identity")
def identity_root(cloud: Cloud, req: Request):
    return 300, {"versions": {"values": [_identity_version(req)]}}


@router.route("GET", "/identity/v3", kind="discovery", service="identity")
def identity_v3(cloud: Cloud, req: Request):
    return 200, {"version": _identity_version(req)}


def catalog(cloud: Cloud, req: Request) -> list[dict]:
    base, pid, region = req.base_url, cloud.data["project_id"], cloud.data["region"]

    def entry(type_: str, name: str, url: str) -> dict:
        return {"type": type_, "name": name, "id": uuid.uuid5(uuid.NAMESPACE_URL, type_).hex,
                "endpoints": [{"id": uuid.uuid5(uuid.NAMESPACE_URL, type_ + iface).hex, "interface": iface,
                               "region": region, "region_id": region, "url": url}
                              for iface in ("public", "internal")]}
    return [entry("identity", "keystone", f"{base}/identity"),
            entry("compute", "nova", f"{base}/compute/v2.1"),
            entry("network", "neutron", f"{base}/network"),
            entry("block-storage", "cinder", f"{base}/volume/v3/{pid}"),
            entry("volumev3", "cinderv3", f"{base}/volume/v3/{pid}"),
            entry("image", "glance", f"{base}/image")]


@router.route("POST", "/identity/v3/auth/tokens", kind="token.create", service="identity")
def create_token(cloud: Cloud, req: Request):
    body = req.body if isinstance(req.body, dict) else {}
    ident = (body.get("auth") or {}).get("identity") or {}
    if "password" not in (ident.get("methods") or []):
        raise keystone_error(401, "The request you have made requires authentication.")
    user = (ident.get("password") or {}).get("user") or {}
    d = cloud.data
    known = user.get("name") == d["username"] or user.get("id") == d["user_id"]
    if not known or user.get("password") != d["password"]:
        raise keystone_error(401, "The request you have made requires authentication.")
    scope = ((body.get("auth") or {}).get("scope") or {}).get("project")
    if scope is not None and scope.get("name") not in (d["project_name"], None) and scope.get("id") != d["project_id"]:
        raise keystone_error(401, f"Could not find project: {scope.get('name') or scope.get('id')}.")
    token, expires = cloud.issue_token()
    fmt = "%Y-%m-%dT%H:%M:%S.000000Z"
    domain = {"id": "default", "name": "Default"}
    out = {"methods": ["password"],
           "expires_at": datetime.fromtimestamp(expires, timezone.utc).strftime(fmt),
           "issued_at": datetime.now(timezone.utc).strftime(fmt), "audit_ids": [uuid.uuid4().hex[:22]],
           "user": {"id": d["user_id"], "name": d["username"], "domain": domain, "password_expires_at": None},
           "is_domain": False}
    if scope is not None:
        out.update(project={"id": d["project_id"], "name": d["project_name"], "domain": domain},
                   roles=[{"id": "r-member", "name": "member"}, {"id": "r-reader", "name": "reader"}],
                   catalog=catalog(cloud, req))
    return 201, {"token": out}, {"X-Subject-Token": token}


@router.route("GET", "/identity/v3/auth/tokens", kind="token.get", service="identity")
def check_token(cloud: Cloud, req: Request):
    if not cloud.token_valid(req.headers.get("x-subject-token")):
        raise keystone_error(404, "Could not find token.")
    return 200, {"token": {"methods": ["password"], "project": {"id": cloud.data["project_id"],
                                                                  "name": cloud.data["project_name"]}}}


@router.route("GET", "/identity/v3/projects/{project_id}", kind="project.get", service="identity")
def get_project(cloud: Cloud, req: Request):
    d = cloud.data
    if req.params["project_id"] not in (d["project_id"], d["project_name"]):
        raise keystone_error(404, f"Could not find project: {req.params['project_id']}.")
    return 200, {"project": {"id": d["project_id"], "name": d["project_name"], "domain_id": "default",
                             "enabled": True, "is_domain": False, "parent_id": "default", "tags": [],
                             "description": "cbm sandbox project"}}


# -- version documents of the other services ---------------------------------------------------
def _microversioned(req: Request, id_: str, version: str, min_version: str, updated: str, path: str,
                    media_type: str) -> dict:
    """The version document of a microversioned service (compute, block storage)."""
    return {"id": id_, "status": "CURRENT", "version": version, "min_version": min_version,
            "updated": updated, "links": [{"rel": "self", "href": f"{req.base_url}/{path}/"}],
            "media-types": [{"base": "application/json", "type": media_type}]}


def _compute_version(req: Request) -> dict:
    return _microversioned(req, "v2.1", COMPUTE_MAX, "2.1", "2013-07-23T11:33:21Z", "compute/v2.1",
                           "application/vnd.openstack.compute+json;version=2.1")


@router.route("GET", "/compute", kind="discovery", service="compute")
def compute_root(cloud: Cloud, req: Request):
    v20 = {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "", "updated": "2011-01-21T11:33:21Z",
           "links": [{"rel": "self", "href": f"{req.base_url}/compute/v2/"}]}
    return 200, {"versions": [v20, _compute_version(req)]}


@router.route("GET", "/compute/v2.1", kind="discovery", service="compute")
def compute_v21(cloud: Cloud, req: Request):
    return 200, {"version": _compute_version(req)}


def _volume_version(req: Request) -> dict:
    return _microversioned(req, "v3.0", VOLUME_MAX, "3.0", "2023-08-31T00:00:00Z", "volume/v3",
                           "application/vnd.openstack.volume+json;version=3")


@router.route("GET", "/volume", kind="discovery", service="block-storage")
def volume_root(cloud: Cloud, req: Request):
    return 300, {"versions": [_volume_version(req)]}


@router.route("GET", "/volume/v3", kind="discovery", service="block-storage")
def volume_v3(cloud: Cloud, req: Request):
    return 200, {"versions": [_volume_version(req)]}


@router.route("GET", "/image", kind="discovery", service="image")
def image_root(cloud: Cloud, req: Request):
    link = [{"rel": "self", "href": f"{req.base_url}/image/v2/"}]
    return 300, {"versions": [{"id": "v2.16", "status": "CURRENT", "links": link},
                              {"id": "v2.0", "status": "SUPPORTED", "links": link}]}


@router.route("GET", "/network", kind="discovery", service="network")
def network_root(cloud: Cloud, req: Request):
    return 200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                               "links": [{"rel": "self", "href": f"{req.base_url}/network/v2.0/"}]}]}
