"""HTTP plumbing of the sandbox cloud: routing, OpenStack-shaped errors, pagination, fault injection.

Each service module (identity, compute, network, blockstorage, image) registers its routes on a
Router with `@router.route(METHOD, PATTERN, kind=..., service=...)`. A handler gets a Request and
returns (status, body[, headers]) or raises ApiError.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import socket
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

log = logging.getLogger(__name__)

NOVA_ERROR_KEYS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
                   406: "notAcceptable", 409: "conflictingRequest", 413: "overLimit", 500: "computeFault"}
NEUTRON_TYPES = {400: "BadRequest", 401: "NotAuthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                 500: "InternalError"}


class ApiError(Exception):
    def __init__(self, status: int, body, content_type: str = "application/json"):
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


def nova_error(status: int, message: str) -> ApiError:
    """Nova and Cinder: {"itemNotFound": {"code": 404, "message": ...}}."""
    body = {"code": status, "message": message}
    if status == 413:
        body["retryAfter"] = "0"
    return ApiError(status, {NOVA_ERROR_KEYS.get(status, "computeFault"): body})


def neutron_error(status: int, message: str, type_: str | None = None) -> ApiError:
    return ApiError(status, {"NeutronError": {"type": type_ or NEUTRON_TYPES.get(status, "NeutronError"),
                                              "message": message, "detail": ""}})


def glance_error(status: int, message: str) -> ApiError:
    title = {404: "404 Not Found", 400: "400 Bad Request", 409: "409 Conflict"}.get(status, f"{status} Error")
    html = f"<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n  {message}<br /><br />\n\n\n </body>\n</html>"
    return ApiError(status, html, "text/html; charset=UTF-8")


def keystone_error(status: int, message: str) -> ApiError:
    title = {401: "Unauthorized", 404: "Not Found", 400: "Bad Request"}.get(status, "Error")
    return ApiError(status, {"error": {"code": status, "title": title, "message": message}})


def service_error(service: str, status: int, message: str, type_: str | None = None) -> ApiError:
    if service == "network":
        return neutron_error(status, message, type_)
    if service == "image":
        return glance_error(status, message)
    if service == "identity":
        return keystone_error(status, message)
    return nova_error(status, message)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: object
    base_url: str
    params: dict[str, str] = field(default_factory=dict)
    service: str = ""
    kind: str = ""

    def q(self, name: str, default=None):
        values = self.query.get(name)
        return values[-1] if values else default

    def qlist(self, name: str) -> list[str]:
        """Values of a repeatable, comma-separable parameter (tags=a&tags=b or tags=a,b)."""
        out = []
        for value in self.query.get(name, []):
            out += [v for v in value.split(",") if v]
        return out

    def microversion(self, service: str, default: str) -> tuple[int, int]:
        raw = None
        api = self.headers.get("openstack-api-version", "")
        for part in api.split(","):
            bits = part.strip().split()
            if len(bits) == 2 and bits[0] == service:
                raw = bits[1]
        if raw is None and service == "compute":
            raw = self.headers.get("x-openstack-nova-api-version")
        raw = raw or default
        if raw == "latest":
            raw = default
        try:
            major, minor = raw.split(".")
            return int(major), int(minor)
        except ValueError:
            raise nova_error(400, f"Invalid API version request string {raw}") from None


@dataclass
class Route:
    method: str
    regex: re.Pattern
    handler: object
    kind: str
    service: str


class Router:
    def __init__(self):
        self.routes: list[Route] = []

    def route(self, method: str, pattern: str, kind: str, service: str):
        """pattern: a path with {name} placeholders (one path segment each)."""
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def deco(func):
            self.routes.append(Route(method, regex, func, kind, service))
            return func
        return deco

    def match(self, method: str, path: str):
        allowed = False
        for r in self.routes:
            m = r.regex.match(path)
            if m:
                if r.method == method:
                    return r, m.groupdict()
                allowed = True
        return None, allowed


def paginate(req: Request, items: list[dict], key: str, style: str = "links", id_key: str = "id",
             max_limit: int = 1000):
    """Apply limit/marker; returns (page, extra body fields) with a next link carrying the filters."""
    limit_raw = req.q("limit")
    try:
        limit = min(int(limit_raw), max_limit) if limit_raw is not None else max_limit
    except ValueError:
        raise service_error(req.service, 400, f"Invalid limit {limit_raw!r}") from None
    marker = req.q("marker")
    if marker:
        ids = [str(i.get(id_key)) for i in items]
        if marker not in ids:
            raise service_error(req.service, 400 if req.service != "network" else 404,
                                f"marker [{marker}] not found")
        items = items[ids.index(marker) + 1:]
    page = items[:limit] if limit > 0 else items
    extra = {}
    if len(items) > len(page) and page:
        query = {k: v for k, v in req.query.items() if k not in ("marker", "limit")}
        query["limit"] = [str(limit)]
        query["marker"] = [str(page[-1][id_key])]
        href = f"{req.base_url}{req.path}?{urlencode(query, doseq=True)}"
        if style == "glance":
            extra["next"] = href[len(req.base_url) + len("/image"):]
        else:
            extra[f"{key}_links"] = [{"rel": "next", "href": href}]
    return page, extra


# -- fault injection ---------------------------------------------------------------------------
@dataclass
class Fault:
    mode: str                # "error" (500), "timeout" (hang, then drop the connection), "quota"
    count: int = 1
    kind: str | None = None  # e.g. "server.create", "volume.*"
    method: str | None = None
    path: str | None = None  # a regex searched in the request path
    seconds: float = 120.0   # how long a "timeout" hangs
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def matches(self, req: Request) -> bool:
        if self.kind and not fnmatch.fnmatchcase(req.kind, self.kind):
            return False
        if self.method and self.method.upper() != req.method:
            return False
        if self.path and not re.search(self.path, req.path):
            return False
        return True


def quota_error(service: str, resource: str = "instances", used: int = 0, limit: int = 0) -> ApiError:
    if service == "network":
        return neutron_error(409, f"Quota exceeded for resources: ['{resource}'].", "OverQuota")
    if service == "block-storage":
        if resource == "gigabytes":
            return nova_error(413, "VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed "
                                   f"gigabytes quota. Requested {used}G, quota is {limit}G and 0G has been consumed.")
        return nova_error(413, f"VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) exceeded for "
                               "quota 'volumes'.")
    if service == "compute":
        if resource == "key_pairs":
            return nova_error(403, "Quota exceeded, too many key pairs.")
        return nova_error(403, f"Quota exceeded for {resource}: Requested 1, but already used {used} of {limit} "
                               f"{resource}")
    return service_error(service, 403, "Quota exceeded")


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.rules: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self.lock:
            self.rules.append(fault)
        return fault

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def take(self, req: Request) -> Fault | None:
        with self.lock:
            for rule in self.rules:
                if rule.count > 0 and rule.matches(req):
                    rule.count -= 1
                    if rule.count == 0:
                        self.rules.remove(rule)
                    return rule
        return None

    def take_event(self, kind: str) -> Fault | None:
        """For work that is not an HTTP call (a server's boot, a volume's creation): match on kind."""
        with self.lock:
            for rule in self.rules:
                if rule.count > 0 and rule.kind and fnmatch.fnmatchcase(kind, rule.kind) and not rule.path \
                        and not rule.method:
                    rule.count -= 1
                    if rule.count == 0:
                        self.rules.remove(rule)
                    return rule
        return None

    def listing(self) -> list[dict]:
        with self.lock:
            return [dict(vars(r)) for r in self.rules]


# -- the server --------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cbm-sandbox"
    app = None  # set by make_server

    def setup(self):
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):  # route through logging
        log.info("%s %s", self.address_string(), fmt % args)

    def _dispatch(self):
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = None
            if self.command in ("POST", "PUT"):
                return self._send(400, {"badRequest": {"code": 400, "message": "Malformed request body"}},
                                  "application/json")
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        req = Request(method=self.command, path=parts.path.rstrip("/") or "/",
                      query=parse_qs(parts.query, keep_blank_values=True),
                      headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                      base_url=f"http://{host}")
        status, payload, ctype, headers = self.app.handle(req)
        if status is None:  # injected timeout: drop the connection without an answer
            self.close_connection = True
            return
        self._send(status, payload, ctype, headers)

    def _send(self, status, payload, ctype, headers=None):
        if payload is None:
            data = b""
        elif isinstance(payload, (bytes, str)):
            data = payload.encode() if isinstance(payload, str) else payload
        else:
            data = json.dumps(payload).encode()
        self.send_response(status)
        if data or status not in (204,):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-OpenStack-Request-ID", "req-" + str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self._headers_buffer.append(b"\r\n")
        if data and self.command != "HEAD":
            self._headers_buffer.append(data)  # one write: headers and body together
        self.flush_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch


def make_server(app, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"app": app})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server

