"""The HTTP side of the ODP stand-in (sandbox/odp.py): the token endpoint, the API under /odata/v1
and the steering calls under /__sandbox__ (with the service's admin secret), with the injected faults."""

from __future__ import annotations

import json
import urllib.parse
from http.server import BaseHTTPRequestHandler

TOKEN_PATH = "/auth/realms/CDSE/protocol/openid-connect/token"
API = "/odata/v1"
ADMIN = "/__sandbox__"


def make_handler(odp):
    """The request handler class of an OdpStandIn."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict, headers: dict | None = None) -> None:
            raw = json.dumps(body).encode()
            odp.log.append((self.command, self.path.split("?")[0], status))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _serve(self):
            parsed = urllib.parse.urlsplit(self.path)
            raw = self._body()
            if parsed.path == TOKEN_PATH and self.command == "POST":
                return self._answer(*odp.token(dict(urllib.parse.parse_qsl(raw.decode()))))
            if parsed.path.startswith(ADMIN + "/"):
                if not odp.admin_secret or self.headers.get("X-Sandbox-Admin") != odp.admin_secret:
                    return self._answer(403, {"detail": "admin secret required"})
                if parsed.path == ADMIN + "/ping":
                    return self._answer(200, {"service": "cbm-sandbox-cdse"})
                try:
                    return self._answer(200, odp.admin(parsed.path[len(ADMIN) + 1:], json.loads(raw or b"{}")))
                except (ValueError, TypeError) as exc:
                    return self._answer(400, {"detail": str(exc)})
            if not parsed.path.startswith(API):
                return self._answer(404, {"detail": "Not Found"})
            fault = odp._fault()
            if fault == "expire":
                odp.expire_tokens()
            if not odp.authorized(self.headers.get("Authorization")):
                return self._answer(401, {"detail": "Not authenticated"}, {"WWW-Authenticate": "Bearer"})
            if fault == "429":
                return self._answer(429, {"detail": "Too Many Requests"}, {"Retry-After": str(odp.retry_after)})
            if fault == "422":
                return self._answer(422, {"detail": [{"loc": ["body"], "msg": "injected validation error",
                                                      "type": "value_error"}]})
            if fault == "500":
                return self._answer(500, {"detail": "Internal Server Error"})
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                return self._answer(422, {"detail": [{"loc": ["body"], "msg": "JSON decode error", "type": "json_invalid"}]})
            status, reply = odp.api(self.command, parsed.path[len(API):],
                                    dict(urllib.parse.parse_qsl(parsed.query)), body)
            if fault == "cut":   # carried out, but the answer never arrives
                odp.log.append((self.command, parsed.path, 0))
                self.close_connection = True
                return None
            return self._answer(status, reply)

        do_GET = do_POST = _serve  # noqa: N815 - http.server API

        def log_message(self, *args):
            pass

    return Handler
