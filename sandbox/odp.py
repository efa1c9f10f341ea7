"""A local stand-in of the CDSE On-Demand Production (ODP) API and its Keycloak token endpoint,
for the tests and the sandbox (`cbm sandbox start` serves one, sandbox/cdse.py).

Built from the documented shapes (README "Sentinel-1 CARD on demand"):
  POST /auth/realms/CDSE/protocol/openid-connect/token   password grant (+ totp when the account has
       a TOTP seed) and refresh grant, client cdse-public; Keycloak's errors (invalid_grant ...)
  /odata/v1  GET Workflows; POST BatchOrder/OData.CSC.Order, ProductionOrder/OData.CSC.Order (201,
       the entity in "value"); GET BatchOrder, BatchOrder(<id>), BatchOrder(<id>)/Products,
       ProductionOrders, ProductionOrders(<id>); POST ProductionOrder(<id>)/OData.CSC.Cancel.
       Filters: only `Name eq '...'`. A bearer token is required (401 without a valid one).
Production: items are queued, at most `concurrent` run at once (the free tier runs 2), each takes
`delay` seconds of the stand-in's clock (`advance(s)` moves it; tests never sleep), then completes,
or fails with a message (`fail_next`). The clock is looked at on every API request. A completed
item writes its CARD product under `eodata` (sandbox/synthetic.py, named <input stem>_CARD_BS ...,
covering the input's footprint) and adds it to the catalog stand-in, as CDSE publishes its outputs.
Failures a real service gives: `inject(kind, count, after)` for the next API requests: '429' (with
Retry-After), '422', '500', 'cut' (the request is carried out, the connection closed before the
answer), 'expire' (every access token issued so far expires); a quota: more products in a month
than `quota` answer 403 (the real code is not documented). Order ids start at 1357000.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

from extractor.odp import totp_code
from sandbox.odp_http import API, TOKEN_PATH, make_handler
from sandbox.odp_products import WORKFLOWS, produce

WAITING = ("queued", "in_progress")


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class OdpStandIn:
    """`with OdpStandIn(catalog=cat, eodata=dir) as odp:` odp.url, odp.token_url, odp.username/password."""

    def __init__(self, catalog=None, eodata: str | Path | None = None, port: int = 0, username: str = "agency@example.eu",
                 password: str | None = None, totp_secret: str | None = None, quota: int = 25, concurrent: int = 2,
                 delay: float = 0.0, retry_after: str = "0", token_lifetime: int = 600, admin_secret: str | None = None,
                 state_file: Path | None = None, on_product=None, host: str = "127.0.0.1"):
        self.catalog, self.eodata = catalog, Path(eodata) if eodata else None
        self.username, self.password = username, password or secrets.token_urlsafe(12)
        self.totp_secret = totp_secret
        self.quota, self.concurrent, self.delay, self.retry_after = quota, concurrent, delay, retry_after
        self.token_lifetime, self.admin_secret, self.on_product = token_lifetime, admin_secret, on_product
        self.offset = 0.0
        self.lock = threading.RLock()
        self.access: dict[str, float] = {}      # token -> expiry (stand-in clock)
        self.refresh: dict[str, float] = {}
        self.faults: list[list] = []            # [kind, count, after]
        self.failures: dict[str, str] = {}     # a fragment of an input's name -> the message it fails with
        self.batches: dict[int, dict] = {}
        self.orders: dict[int, dict] = {}
        self.produced: list[dict] = []          # catalog features of the products made
        self.log: list[tuple[str, str, int]] = []   # (method, path, status) of every request
        self.grants = {"password": 0, "refresh_token": 0}
        self.issued: list[str] = []             # every token handed out (tests look for leaks)
        self.next_id = 1357000
        self.state_file = state_file
        self._load()
        self._server = ThreadingHTTPServer((host, port), make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"

    @property
    def url(self) -> str:
        return self.base + API

    @property
    def token_url(self) -> str:
        return self.base + TOKEN_PATH

    def start(self) -> "OdpStandIn":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- steering (tests call these; the service exposes them under /__sandbox__) -----------------
    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.offset += seconds
            self.tick()

    def inject(self, kind: str, count: int = 1, after: int = 0) -> None:
        """The `count` API requests after the next `after` ones meet the fault `kind`."""
        if kind not in ("429", "422", "500", "cut", "expire"):
            raise ValueError(f"unknown fault {kind!r}")
        with self.lock:
            self.faults.append([kind, count, after])

    def fail_next(self, failures: dict[str, str]) -> None:
        """The next order of an input whose name contains a key fails with its message."""
        with self.lock:
            self.failures.update(failures)

    def expire_tokens(self) -> None:
        with self.lock:
            self.access.clear()

    def finish(self) -> None:
        """Run the production until nothing waits (the clock moves by `delay` per round)."""
        with self.lock:
            for _ in range(len(self.orders) + 2):
                self.tick()
                if not any(o["Status"] in WAITING for o in self.orders.values()):
                    return
                self.offset += self.delay

    def counts(self) -> dict[str, int]:
        with self.lock:
            out: dict[str, int] = {}
            for o in self.orders.values():
                out[o["Status"]] = out.get(o["Status"], 0) + 1
            return out

    # -- production ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Finish the items whose time has come, then start queued ones up to `concurrent`."""
        with self.lock:
            now, changed = self.now(), False
            for o in sorted(self.orders.values(), key=lambda o: int(o["Id"])):
                if o["Status"] == "in_progress" and now >= o["_started"] + self.delay:
                    self._end(o)
                    changed = True
            running = sum(o["Status"] == "in_progress" for o in self.orders.values())
            for o in sorted(self.orders.values(), key=lambda o: int(o["Id"])):
                if running >= self.concurrent:
                    break
                if o["Status"] == "queued":
                    o.update(Status="in_progress", StatusMessage="processing", _started=now)
                    running += 1
                    changed = True
            if changed:
                self._save()

    def _end(self, o: dict) -> None:
        name = o["InputProductReference"]["Reference"]
        key = next((k for k in self.failures if k in name), None)
        if key is not None:
            o.update(Status="failed", StatusMessage=self.failures.pop(key))
            return
        feature = produce(o["WorkflowName"], name, self._input_feature(name), self.eodata)
        if feature is not None:
            self.produced.append(feature)
            if self.catalog is not None:
                self.catalog.features.setdefault("Sentinel1", []).append(feature)
            if self.on_product is not None:
                self.on_product(feature["properties"]["productIdentifier"])
        o.update(Status="completed", StatusMessage="requested output product is available", _done=self.now())

    def _input_feature(self, name: str) -> dict | None:
        if self.catalog is None:
            return None
        lists = [fs for fs in self.catalog.features.values()]
        for raw in self.catalog.recorded.values():
            lists.append(json.loads(raw if isinstance(raw, bytes) else Path(raw).read_bytes())["features"])
        return next((f for fs in lists for f in fs if (f.get("properties") or {}).get("title") == name), None)

    # -- orders ------------------------------------------------------------------------------------
    def _workflow(self, name):
        return next((w for w in WORKFLOWS if w["Name"] == name), None)

    def _validate(self, body: dict, names_key: str, names: list) -> tuple[int, dict] | None:
        def bad(loc, msg, kind="value_error"):
            return 422, {"detail": [{"loc": ["body", *loc], "msg": msg, "type": kind}]}
        if not isinstance(body, dict) or not body.get("WorkflowName"):
            return bad(["WorkflowName"], "Field required", "missing")
        wf = self._workflow(body["WorkflowName"])
        if wf is None:
            return bad(["WorkflowName"], f"Workflow '{body['WorkflowName']}' does not exist")
        if not names or not all(isinstance(n, str) and n for n in names):
            return bad([names_key], "List should have at least 1 item", "too_short")
        for k, n in enumerate(names):
            if n[4:14] not in wf["InputProductTypes"]:
                return bad([names_key, k], f"Product {n} is not an input of workflow {wf['Name']}")
            if self.catalog is not None and self._input_feature(n) is None:
                return bad([names_key, k], f"Product {n} not found in the catalogue")
        month = _iso(self.now())[:7]
        used = sum(o["SubmissionDate"][:7] == month for o in self.orders.values())
        if used + len(names) > self.quota:
            return 403, {"detail": f"Quota exceeded: {self.quota} processed products per month, {used} used, "
                                   f"{len(names)} requested"}
        return None

    def _new_order(self, wf: dict, name: str, label: str, batch_id: int | None) -> dict:
        self.next_id += 1
        now = self.now()
        o = {"Id": str(self.next_id), "Status": "queued", "StatusMessage": "queued", "SubmissionDate": _iso(now),
             "Name": label, "EstimatedDate": _iso(now + max(self.delay, 60)),
             "InputProductReference": {"Reference": name, "ContentDate": None}, "WorkflowOptions": [],
             "WorkflowName": wf["Name"], "WorkflowId": int(wf["Id"]), "Priority": 1, "_batch": batch_id}
        self.orders[self.next_id] = o
        return o

    def create_batch(self, body: dict) -> tuple[int, dict]:
        names = body.get("IdentifierList") if isinstance(body, dict) else None
        refusal = self._validate(body, "IdentifierList", names if isinstance(names, list) else [])
        if refusal:
            return refusal
        wf = self._workflow(body["WorkflowName"])
        self.next_id += 1
        bid = self.next_id
        self.batches[bid] = {"Name": body.get("Name"), "Priority": body.get("Priority", 1), "WorkflowName": wf["Name"],
                             "NotificationEndpoint": None, "WorkflowOptions": body.get("WorkflowOptions") or [],
                             "Id": bid, "SubmissionDate": _iso(self.now()), "EstimatedDate": None,
                             "KeycloakUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.username)),
                             "WorkflowId": int(wf["Id"]), "WorkflowDisplayName": wf["DisplayName"],
                             "WorkflowVersion": wf["WorkflowVersion"]}
        for n in names:
            self._new_order(wf, n, body.get("Name") or n, bid)
        self._save()
        return 201, {"@odata.context": "#metadata/Odata.CSC.BatchOrder", "value": self._batch(bid)}

    def create_order(self, body: dict) -> tuple[int, dict]:
        ref = (body.get("InputProductReference") or {}).get("Reference") if isinstance(body, dict) else None
        refusal = self._validate(body, "InputProductReference", [ref] if ref else [])
        if refusal:
            return refusal
        o = self._new_order(self._workflow(body["WorkflowName"]), ref, body.get("Name") or ref, None)
        self._save()
        return 201, {"@odata.context": "$metadata#OData.CSC.Order", "value": self._public(o)}

    def _items(self, bid: int) -> list[dict]:
        return [o for o in self.orders.values() if o["_batch"] == bid]

    def _batch(self, bid: int) -> dict:
        items = self._items(bid)
        n = {s: sum(o["Status"] == s for o in items) for s in ("queued", "in_progress", "completed", "failed", "cancelled")}
        status = ("in_progress" if n["in_progress"] else "queued" if n["queued"] else
                  "completed" if n["completed"] else "failed" if n["failed"] else "cancelled")
        summary = {"status": status, "processing_order_items_count": n["in_progress"], "downloading_order_items_count": 0,
                   "done_order_items_count": n["completed"], "already_done_order_items_count": 0,
                   "queued_order_items_count": n["queued"],
                   "failed_or_cancelled_order_items_count": n["failed"] + n["cancelled"],
                   "last_order_item_change_timestamp": _iso(self.now())}
        return {**self.batches[bid], "Status": status, "Summary": summary}

    @staticmethod
    def _public(o: dict) -> dict:
        return {k: v for k, v in o.items() if not k.startswith("_")}

    def cancel(self, oid: int) -> tuple[int, dict]:
        o = self.orders.get(oid)
        if o is None:
            return 404, {"detail": f"ProductionOrder {oid} not found"}
        if o["Status"] == "queued":
            o.update(Status="cancelled", StatusMessage="cancelled by the user")
            self._save()
        return 200, {"value": self._public(o)}

    # -- the API -----------------------------------------------------------------------------------
    def api(self, method: str, path: str, query: dict, body) -> tuple[int, dict]:
        with self.lock:
            self.tick()
            name = re.search(r"Name eq '((?:[^']|'')*)'", query.get("$filter", ""))
            name = name.group(1).replace("''", "'") if name else None
            if method == "GET" and path == "/Workflows":
                return 200, {"@odata.context": "$metadata#Workflows", "value": WORKFLOWS}
            if method == "POST" and path == "/BatchOrder/OData.CSC.Order":
                return self.create_batch(body)
            if method == "POST" and path == "/ProductionOrder/OData.CSC.Order":
                return self.create_order(body)
            if method == "GET" and path == "/BatchOrder":
                return 200, {"value": [self._batch(b) for b in self.batches if name in (None, self.batches[b]["Name"])]}
            if method == "GET" and path == "/ProductionOrders":
                return 200, {"@odata.context": "$metadata#ProductionOrder/$entity", "value": [
                    self._public(o) for o in self.orders.values() if name in (None, o["Name"])]}
            m = re.fullmatch(r"/(BatchOrder|ProductionOrders?)\((\d+)\)(/Products|/OData\.CSC\.Cancel)?", path)
            if m:
                kind, oid, tail = m.group(1), int(m.group(2)), m.group(3)
                if kind == "BatchOrder" and method == "GET" and oid in self.batches:
                    if tail == "/Products":
                        return 200, {"value": [self._public(o) for o in self._items(oid)]}
                    if tail is None:
                        return 200, {"value": self._batch(oid)}
                if kind != "BatchOrder" and tail == "/OData.CSC.Cancel" and method == "POST":
                    return self.cancel(oid)
                if kind != "BatchOrder" and tail is None and method == "GET" and oid in self.orders:
                    return 200, {"value": self._public(self.orders[oid])}
                return 404, {"detail": f"{kind}({oid}) not found"}
            return 404, {"detail": "Not Found"}

    def token(self, form: dict) -> tuple[int, dict]:
        with self.lock:
            if form.get("client_id") != "cdse-public":
                return 401, {"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"}
            grant, now = form.get("grant_type"), self.now()
            if grant == "password":
                codes = {totp_code(self.totp_secret, now + d) for d in (-30, 0, 30)} if self.totp_secret else None
                if (form.get("username"), form.get("password")) != (self.username, self.password) or \
                        (codes is not None and form.get("totp") not in codes):
                    return 401, {"error": "invalid_grant", "error_description": "Invalid user credentials"}
            elif grant == "refresh_token":
                if self.refresh.pop(form.get("refresh_token"), 0) <= now:
                    return 400, {"error": "invalid_grant", "error_description": "Token is not active"}
            else:
                return 400, {"error": "unsupported_grant_type", "error_description": "Unsupported grant type"}
            self.grants[grant] += 1
            access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            self.issued += [access, refresh]
            self.access[access] = now + self.token_lifetime
            self.refresh[refresh] = now + 3600
            return 200, {"access_token": access, "expires_in": self.token_lifetime, "refresh_expires_in": 3600,
                         "refresh_token": refresh, "token_type": "Bearer", "not-before-policy": 0,
                         "session_state": str(uuid.uuid4()), "scope": "openid email profile"}

    def _fault(self) -> str | None:
        with self.lock:
            hit = None
            for f in self.faults:
                if f[2] > 0:
                    f[2] -= 1
                elif f[1] > 0 and hit is None:
                    f[1] -= 1
                    hit = f[0]
            return hit

    def authorized(self, header: str | None) -> bool:
        token = (header or "")[7:] if (header or "").startswith("Bearer ") else None
        with self.lock:
            return token is not None and self.access.get(token, 0) > self.now()

    def admin(self, op: str, args: dict) -> dict:
        """The steering calls of the service (sandbox/cdse.py) by name."""
        if op == "settings":
            for key in ("quota", "concurrent", "delay", "retry_after", "token_lifetime"):
                if key in args:
                    setattr(self, key, args[key])
        elif op in ("inject", "fail_next", "advance", "expire_tokens", "finish"):
            getattr(self, op)(**args)
        elif op != "state":
            raise ValueError(op)
        return {"counts": self.counts(), "offset": self.offset}

    # -- persistence (the service keeps its orders over restarts) ----------------------------------
    def _save(self) -> None:
        if self.state_file is not None:
            data = {"next_id": self.next_id, "offset": self.offset, "batches": self.batches,
                    "orders": self.orders, "produced": self.produced}
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            tmp.replace(self.state_file)

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.is_file():
            return
        data = json.loads(self.state_file.read_text())
        self.next_id, self.offset, self.produced = data["next_id"], data["offset"], data["produced"]
        self.batches = {int(k): v for k, v in data["batches"].items()}
        self.orders = {int(k): v for k, v in data["orders"].items()}
        if self.catalog is not None:
            self.catalog.features.setdefault("Sentinel1", []).extend(self.produced)
