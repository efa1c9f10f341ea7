"""The sandbox cloud's state and request handling: one project, persisted to state.json.

The state is one JSON document (see `seed()` for its shape) guarded by one lock and written
atomically after every change, so a restart of the service finds everything where it was and
reconciles it with Docker (service.reconcile()). Slow work (booting a container, a loop device) runs in
background threads: the API answers at once with the transitional status, as the real services do.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
import uuid
from pathlib import Path

from sandbox.cloud import backend as backend_mod
from sandbox.cloud.base import now, router, stable_id
from sandbox.cloud.http import ApiError, Faults, Request, keystone_error, quota_error, service_error

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
TOKEN_LIFETIME = 12 * 3600
DEFAULT_QUOTAS = {
    "instances": 20, "cores": 80, "ram": 327680, "key_pairs": 100,
    "volumes": 20, "gigabytes": 2000,
    "floatingip": 20, "security_group": 50, "security_group_rule": 500, "port": 100, "network": 20,
    "subnet": 20,
}
FLAVORS = [  # name, vcpus, ram MiB, disk GB (advisory: a host container is not limited)
    ("eo1.xsmall", 1, 1024, 8), ("eo1.medium", 2, 4096, 16), ("eo2.large", 4, 16384, 32),
    ("eo2a.large", 4, 16384, 32),
]
IMAGES = ["Ubuntu 22.04 LTS", "Debian 12"]  # both are the sandbox host image (Debian bookworm)
VOLUME_TYPES = ["ssd", "hdd"]


class Cloud:
    """The state of one sandbox cloud and the dispatch of its API requests to the routes of `router`.
    A new state (`fresh`) has no networks yet: service.open_cloud() seeds them, then saves."""

    def __init__(self, state_dir: Path, port: int = 0, eodata: str | None = None):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / STATE_FILE
        self.lock = threading.RLock()
        self.faults = Faults()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.fresh = not self.path.exists()
        self.data = self.seed() if self.fresh else json.loads(self.path.read_text())
        if eodata:
            self.data["eodata"] = str(Path(eodata).resolve())
        if port:
            self.data["port"] = port
        self.backend = backend_mod.Backend(self.data["instance"], self.state_dir)
        self.firewalls: dict[str, str] = {}  # server id -> the security-group rules last pushed to it

    # -- state -----------------------------------------------------------------------------
    def seed(self) -> dict:
        instance = secrets.token_hex(3)
        project = uuid.uuid4().hex
        data = {
            "version": 1, "instance": instance, "port": 0,
            "project_id": project, "project_name": "demo", "user_id": uuid.uuid4().hex, "username": "demo",
            "password": secrets.token_urlsafe(18), "token_secret": secrets.token_hex(32),
            "admin_secret": secrets.token_urlsafe(18), "region": "RegionOne",
            "eodata": str(self.state_dir / "eodata"), "page_size": 1000, "quotas": dict(DEFAULT_QUOTAS),
            "flavors": {}, "images": {}, "volume_types": {}, "keypairs": {}, "servers": {}, "networks": {},
            "subnets": {}, "ports": {}, "floatingips": {}, "security_groups": {}, "security_group_rules": {},
            "volumes": {}, "routers": {},
        }
        for i, (name, vcpus, ram, disk) in enumerate(FLAVORS):
            fid = stable_id("flavor", name)
            data["flavors"][fid] = {"id": fid, "name": name, "vcpus": vcpus, "ram": ram, "disk": disk}
        for name in IMAGES:
            iid = stable_id("image", name)
            data["images"][iid] = {"id": iid, "name": name, "created_at": now(), "tags": [],
                                   "os_distro": name.split()[0].lower(), "os_version": name.split()[1]}
        for name in VOLUME_TYPES:
            tid = stable_id("volume-type", name)
            data["volume_types"][tid] = {"id": tid, "name": name}
        return data

    def save(self) -> None:
        with self.lock:
            tmp = self.path.with_suffix(".tmp")
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)

    def coll(self, name: str) -> dict:
        return self.data[name]

    def background(self, what: str, func, *args) -> None:
        """Run slow work in a thread; failures are logged (the function sets ERROR states itself)."""
        def run():
            try:
                func(*args)
            except Exception:
                log.exception("background %s failed", what)
        t = threading.Thread(target=run, name=what, daemon=True)
        self.threads = [x for x in self.threads if x.is_alive()] + [t]
        t.start()

    def quota_check(self, service: str, resource: str, used: int, adding: int = 1):
        limit = self.data["quotas"].get(resource, -1)
        if limit >= 0 and used + adding > limit:
            raise quota_error(service, resource, used + adding if resource == "gigabytes" else used, limit)

    # -- auth --------------------------------------------------------------------------------
    def issue_token(self) -> tuple[str, int]:
        expires = int(time.time()) + TOKEN_LIFETIME
        sig = hmac.new(self.data["token_secret"].encode(), str(expires).encode(), hashlib.sha256).hexdigest()
        return f"gAAAA{expires}.{sig}", expires

    def token_valid(self, token: str | None) -> bool:
        if not token or not token.startswith("gAAAA") or "." not in token:
            return False
        expires, sig = token[5:].split(".", 1)
        good = hmac.new(self.data["token_secret"].encode(), expires.encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(sig, good) and expires.isdigit() and int(expires) > time.time()

    # -- dispatch --------------------------------------------------------------------------
    def handle(self, req: Request):
        route, params = router.match(req.method, req.path)
        if route is None:
            service = req.path.strip("/").split("/")[0]
            service = {"compute": "compute", "network": "network", "volume": "block-storage",
                       "image": "image", "identity": "identity"}.get(service, "compute")
            status = 405 if params else 404
            err = service_error(service, status, f"The resource could not be found: {req.method} {req.path}")
            return err.status, err.body, err.content_type, {}
        req.params, req.service, req.kind = params, route.service, route.kind
        headers = {}
        try:
            if route.service == "admin":
                if not hmac.compare_digest(req.headers.get("x-sandbox-admin", ""), self.data["admin_secret"]):
                    raise keystone_error(401, "admin secret missing or wrong")
            elif route.kind not in ("discovery", "token.create") and not self.token_valid(
                    req.headers.get("x-auth-token")):
                raise keystone_error(401, "The request you have made requires authentication.")
            if route.service != "admin":
                fault = self.faults.take(req)
                if fault is not None:
                    log.warning("injected fault %s on %s %s (%s)", fault.mode, req.method, req.path, req.kind)
                    if fault.mode == "timeout":
                        self.stopping.wait(fault.seconds)
                        return None, None, None, None
                    if fault.mode == "quota":
                        resource = {"compute": "instances", "block-storage": "volumes"}.get(
                            route.service, req.kind.split(".")[0])
                        resource = {"fip": "floatingip"}.get(resource, resource)
                        limit = self.data["quotas"].get(resource, 0)
                        raise quota_error(route.service, resource, limit, limit)
                    raise service_error(route.service, 500,
                                        "Unexpected API Error. Please report this at http://bugs.launchpad.net/"
                                        " (injected by the cbm sandbox)")
            with self.lock:  # handlers are quick; slow work runs in background threads
                result = route.handler(self, req)
        except ApiError as err:
            return err.status, err.body, err.content_type, headers
        except Exception as exc:  # a bug in the sandbox: answer like a broken service would
            log.exception("error handling %s %s", req.method, req.path)
            err = service_error(route.service, 500, f"Unexpected API Error: {type(exc).__name__}")
            return err.status, err.body, err.content_type, headers
        status, body = result[0], result[1]
        if len(result) > 2:
            headers.update(result[2])
        if route.service == "compute" and route.kind != "discovery":
            mv = req.microversion("compute", "2.1")
            headers.update({"OpenStack-API-Version": f"compute {mv[0]}.{mv[1]}",
                            "X-OpenStack-Nova-API-Version": f"{mv[0]}.{mv[1]}",
                            "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"})
        elif route.service == "block-storage" and route.kind != "discovery":
            mv = req.microversion("volume", "3.0")
            headers.update({"OpenStack-API-Version": f"volume {mv[0]}.{mv[1]}", "Vary": "OpenStack-API-Version"})
        return status, body, "application/json", headers

    def shutdown(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)
        self.save()

