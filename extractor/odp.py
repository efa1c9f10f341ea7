"""A client of the CDSE On-Demand Production (ODP) API, which produces Sentinel-1 CARD-BS and CARD-COH
products on request (`cbm order ...`, extractor/orders.py).

The service (README "Sentinel-1 CARD on demand"):
  * OData JSON at odp.url (https://odp.dataspace.copernicus.eu/odata/v1): GET /Workflows,
    POST /BatchOrder/OData.CSC.Order {Name, WorkflowName, IdentifierList, ...} -> {"value": {Id, Status}},
    GET /BatchOrder?$filter=Name eq '...', GET /BatchOrder(<id>)/Products (one production order per
    input), POST /ProductionOrder(<id>)/OData.CSC.Cancel. An entity may come wrapped in "value" (a
    dict or a one-element list) or bare: both are read.
  * Tokens from the CDSE Keycloak (odp.token_url, client cdse-public): the password grant (plus a
    TOTP code with two-factor authentication), then the refresh grant. Access tokens live 10 minutes
    and refresh tokens 60; a token with less than REFRESH_MARGIN seconds left is renewed before a
    request, and a 401 or 403 renews it once before the answer counts.
  * 422 is a validation error ({"detail": [{"loc", "msg"}]}); 429 / 503 are retried after their
    Retry-After; a 403 with a fresh token is a refusal (the quota): the caller stops there.
A POST whose answer is lost (connection cut, 5xx) may have been taken: InDoubt, so that the caller
looks the batch up by its Name before ordering again (a re-run never orders twice).

Credentials never come from the command line: a 0600 YAML file (odp.credentials_file: username,
password, totp_secret) or the variables CDSE_USERNAME, CDSE_PASSWORD, CDSE_TOTP (a current code) and
CDSE_TOTP_SECRET (the base32 seed, codes are computed when needed). Tokens and passwords are never
logged nor put in a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import os
import stat
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from extractor.errors import CbmError, UserError, one_line

log = logging.getLogger(__name__)

CLIENT_ID = "cdse-public"
REFRESH_MARGIN = 60.0      # seconds: renew a token that has less than this left
MAX_WAIT = 60.0            # seconds: the longest Retry-After we honour
ENV = {"username": "CDSE_USERNAME", "password": "CDSE_PASSWORD", "totp": "CDSE_TOTP",
       "totp_secret": "CDSE_TOTP_SECRET"}


class Refused(CbmError):
    """The service refused the request with a valid token (a quota, a permission)."""


class Invalid(CbmError):
    """The service found the request invalid (HTTP 422)."""


class NotFound(CbmError):
    """The entity does not exist (HTTP 404)."""


class InDoubt(CbmError):
    """A POST whose answer was lost: the service may or may not have taken it."""


# -- credentials ------------------------------------------------------------------------------
@dataclass(repr=False)
class Credentials:
    username: str
    password: str
    totp: str | None = None          # a current code
    totp_secret: str | None = None   # the base32 seed

    def code(self) -> str | None:
        return totp_code(self.totp_secret) if self.totp_secret else self.totp

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=****)"


def totp_code(secret: str, at: float | None = None, digits: int = 6, step: int = 30) -> str:
    """The RFC 6238 code (HMAC-SHA1) of a base32 seed at time `at` (default now)."""
    text = "".join(secret.split()).upper()
    try:
        key = base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        raise UserError("the CDSE TOTP seed is not base32 text; copy it again from the account's "
                        "two-factor setup (totp_secret)") from None
    counter = int((time.time() if at is None else at) // step)
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def load_credentials(settings, environ=None) -> Credentials:
    """The CDSE account: the CDSE_* variables, else odp.credentials_file (must be 0600)."""
    environ = os.environ if environ is None else environ
    data: dict = {}
    path = settings.odp.credentials_file
    if path:
        p = Path(path).expanduser()
        try:
            mode, text = p.stat().st_mode, p.read_text()
        except OSError as exc:
            raise UserError(f"odp.credentials_file {p} cannot be read ({exc.strerror}); fix the path") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UserError(f"odp.credentials_file {p} is readable by others; run: chmod 600 {p}")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            data = None
        if not isinstance(data, dict):
            raise UserError(f"odp.credentials_file {p} must be YAML with username, password and, with "
                            "two-factor authentication, totp_secret")
    values = {key: environ.get(var) or (str(data[key]) if data.get(key) is not None else None)
              for key, var in ENV.items()}
    if not values["username"] or not values["password"]:
        raise UserError("no CDSE account for the On-Demand Production API: set odp.credentials_file (a 0600 "
                        "YAML file with username, password and, with two-factor authentication, totp_secret) "
                        "or the variables CDSE_USERNAME and CDSE_PASSWORD")
    return Credentials(**values)


# -- HTTP -------------------------------------------------------------------------------------
def _send(method: str, url: str, data: bytes | None, headers: dict, timeout: float):
    """(status, headers, body); HTTP errors are answers too. Network failures raise OSError."""
    req = urllib.request.Request(url, data=data, method=method, headers={"User-Agent": "cbm-onboard", **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:   # OSError: reset, timeout
        raise OSError(str(getattr(exc, "reason", exc))) from None


def detail(body: bytes) -> str:
    """The reason a service gave: FastAPI `detail` (text, object or list of {msg}), Keycloak
    `error_description`, else the start of the body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return one_line(body[:200].decode("utf-8", "replace"), 200)
    if isinstance(data, dict):
        d = data.get("detail", data.get("error_description", data.get("message", data)))
        if isinstance(d, list):
            d = "; ".join(str(x.get("msg", x)) if isinstance(x, dict) else str(x) for x in d)
        elif isinstance(d, dict):
            d = d.get("message") or d.get("ErrorMessage") or d
        return one_line(d, 300)
    return one_line(data, 300)


def _retry_after(headers, default: float) -> float:
    try:
        return max(0.0, min(float(headers.get("Retry-After")), MAX_WAIT))
    except (TypeError, ValueError):
        return default


def entity(data) -> dict:
    """An OData entity, bare or wrapped in "value" (a dict or a one-element list)."""
    value = data.get("value", data) if isinstance(data, dict) else data
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, dict):
        raise CbmError("the ODP reply is not an OData entity; check odp.url")
    return value


class Tokens:
    """Access tokens of one session: renewed before they expire, by refresh grant while it lasts."""

    def __init__(self, settings, credentials: Credentials, sleep=time.sleep):
        self.url, self.credentials, self.sleep = settings.odp.token_url, credentials, sleep
        self.timeout, self.retries, self.backoff = settings.odp.timeout, settings.odp.retries, settings.odp.backoff
        self._access: str | None = None
        self._refresh: str | None = None
        self._access_until = self._refresh_until = 0.0

    def bearer(self) -> str:
        now = time.monotonic()
        if self._access and now < self._access_until - REFRESH_MARGIN:
            return self._access
        if self._refresh and now < self._refresh_until - REFRESH_MARGIN:
            if self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh}, login=False):
                return self._access
        self._grant({"grant_type": "password", "username": self.credentials.username,
                     "password": self.credentials.password,
                     **({"totp": code} if (code := self.credentials.code()) else {})}, login=True)
        return self._access

    def invalidate(self) -> None:
        """The service refused the access token: the next request gets a new one."""
        self._access = None

    def _grant(self, form: dict, login: bool) -> bool:
        data = urllib.parse.urlencode({"client_id": CLIENT_ID, **form}).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                status, hdrs, body = _send("POST", self.url, data, headers, self.timeout)
            except OSError as exc:
                if attempt == self.retries:
                    raise CbmError(f"CDSE login service unreachable at {self.url}: {exc}; check odp.token_url") from None
                status, hdrs, body = None, {}, b""
            if status == 200:
                break
            if status in (429, 502, 503, 504) or status is None:
                if attempt < self.retries:
                    self.sleep(_retry_after(hdrs, delay))
                    delay *= 2
                    continue
                raise CbmError(f"CDSE login service at {self.url} answered HTTP {status} {self.retries + 1} times: "
                               f"{detail(body)}; try again later")
            if not login and status in (400, 401):
                log.info("odp: the refresh token was refused; logging in again")
                self._refresh = None
                return False
            who = self.credentials.username
            hint = " and the TOTP code or seed" if self.credentials.code() else ""
            raise UserError(f"CDSE login refused for {who} (HTTP {status}: {detail(body)}); check the account"
                            f"{hint} in odp.credentials_file or CDSE_USERNAME/CDSE_PASSWORD")
        try:
            reply = json.loads(body)
            access, lifetime = reply["access_token"], float(reply.get("expires_in") or 600)
        except (ValueError, KeyError, TypeError):
            raise CbmError(f"the CDSE login service at {self.url} did not answer with a token; check odp.token_url") from None
        now = time.monotonic()
        self._access, self._access_until = access, now + lifetime
        if reply.get("refresh_token"):
            self._refresh = reply["refresh_token"]
            self._refresh_until = now + float(reply.get("refresh_expires_in") or 3600)
        log.info("odp: %s (token valid %.0f s)", "logged in" if login else "token refreshed", lifetime)
        return True


class Client:
    """Authenticated JSON requests to the ODP API, with the retries and errors described above."""

    def __init__(self, settings, credentials: Credentials | None = None, sleep=time.sleep):
        o = settings.odp
        if not 1 <= o.batch_size <= 1000:
            raise UserError(f"odp.batch_size {o.batch_size} must be between 1 and 1000; fix that setting")
        self.base = o.url.rstrip("/")
        self.timeout, self.retries, self.backoff, self.sleep = o.timeout, o.retries, o.backoff, sleep
        self.tokens = Tokens(settings, credentials or load_credentials(settings), sleep)

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        url = path if path.startswith(("http://", "https://")) else self.base + path
        where = url.split("?")[0]
        data = json.dumps(body).encode() if body is not None else None
        renewed, delay, attempt = False, self.backoff, 0
        while True:
            headers = {"Authorization": f"Bearer {self.tokens.bearer()}", "Accept": "application/json",
                       **({"Content-Type": "application/json"} if data is not None else {})}
            log.debug("odp: %s %s", method, url)
            try:
                status, hdrs, raw = _send(method, url, data, headers, self.timeout)
            except OSError as exc:
                if method != "GET":
                    raise InDoubt(f"ODP request {method} {where} got no answer ({exc})") from None
                if attempt == self.retries:
                    raise CbmError(f"ODP unreachable at {where}: {exc} (after {attempt + 1} tries); check odp.url") from None
                attempt += 1
                self.sleep(delay)
                delay *= 2
                continue
            if 200 <= status < 300:
                try:
                    return json.loads(raw) if raw.strip() else {}
                except (ValueError, UnicodeDecodeError):
                    raise CbmError(f"ODP reply from {where} is not JSON; check odp.url") from None
            if status in (401, 403) and not renewed:   # an expired or revoked token: once with a new one
                renewed = True
                self.tokens.invalidate()
                continue
            if status in (429, 503) and attempt < self.retries:
                attempt += 1
                wait = _retry_after(hdrs, delay)
                log.info("odp: HTTP %d, retry %d/%d in %.1f s", status, attempt, self.retries, wait)
                self.sleep(wait)
                delay *= 2
                continue
            reason = f"HTTP {status}: {detail(raw)}"
            if status == 403:
                raise Refused(reason)
            if status == 422:
                raise Invalid(reason)
            if status == 404:
                raise NotFound(reason)
            if method != "GET" and status >= 500:
                raise InDoubt(f"ODP request {method} {where} failed ({reason})")
            raise CbmError(f"ODP request {method} {where} failed ({reason})")

    def values(self, path: str) -> list[dict]:
        """Every entity of a collection, following @odata.nextLink."""
        out: list[dict] = []
        url: str | None = path
        while url:
            data = self.call("GET", url)
            value = data.get("value", []) if isinstance(data, dict) else data
            out.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, dict))
            url = data.get("@odata.nextLink") if isinstance(data, dict) else None
        return out

    # -- the resources ---------------------------------------------------------------------------
    def workflows(self) -> list[dict]:
        return self.values("/Workflows")

    def create_batch(self, name: str, workflow: str, inputs: list[str]) -> dict:
        body = {"Name": name, "Priority": 1, "WorkflowName": workflow, "WorkflowOptions": [],
                "IdentifierList": list(inputs)}
        return entity(self.call("POST", "/BatchOrder/OData.CSC.Order", body))

    def find_batches(self, name: str) -> list[dict]:
        query = urllib.parse.quote("Name eq '" + name.replace("'", "''") + "'")
        return self.values(f"/BatchOrder?$filter={query}")

    def batch(self, batch_id) -> dict:
        return entity(self.call("GET", f"/BatchOrder({batch_id})"))

    def batch_items(self, batch_id) -> list[dict]:
        return self.values(f"/BatchOrder({batch_id})/Products")

    def cancel(self, order_id) -> dict:
        return entity(self.call("POST", f"/ProductionOrder({order_id})/OData.CSC.Cancel", {}))
