"""Talking to the OpenStack cloud of a spec: connection, one-line errors, name lookups, waits.

clouds.yaml is found the standard way (OS_CLIENT_CONFIG_FILE, ./clouds.yaml, ~/.config/openstack/,
/etc/openstack/); the spec only names the entry. Errors from the SDK become CbmError/UserError with
one line saying what was being done, never a traceback and never a credential.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import keystoneauth1.exceptions as ka_exc
import openstack
import openstack.config
from openstack import exceptions as os_exc

from extractor.errors import CbmError, UserError, one_line
from provision.cloud.progress import Waiter

log = logging.getLogger(__name__)


def _quiet_sdk_logs() -> None:
    # keystoneauth and the SDK log recoverable trouble as warnings; our messages say what matters.
    if log.getEffectiveLevel() > logging.DEBUG:
        for name in ("keystoneauth", "openstack", "stevedore", "urllib3"):
            logging.getLogger(name).setLevel(logging.ERROR)


def describe(exc: Exception) -> str:
    """A short, secret-free description of an SDK/keystoneauth error."""
    if isinstance(exc, os_exc.HttpException):
        code = exc.status_code
        text = one_line(exc.details or exc.message or "") or "no details"
        if is_quota(exc):
            return f"quota exceeded (HTTP {code}): {text}"
        return f"HTTP {code}: {text}"
    if isinstance(exc, ka_exc.ConnectTimeout):
        return "no answer from the cloud in time (timed out)"
    if isinstance(exc, ka_exc.ConnectionError):
        return "cannot connect to the cloud"
    if isinstance(exc, os_exc.ResourceTimeout):
        return one_line(exc)
    return one_line(exc) or type(exc).__name__


def is_quota(exc: Exception) -> bool:
    if not isinstance(exc, os_exc.HttpException):
        return False
    text = f"{exc.details} {exc.message}".lower()
    return exc.status_code == 413 or "quota" in text or "overquota" in text or "overlimit" in text


def is_transient(exc: Exception) -> bool:
    """Errors worth polling through: 5xx, timeouts, dropped connections."""
    if isinstance(exc, os_exc.HttpException):
        return exc.status_code is not None and exc.status_code >= 500
    return isinstance(exc, (ka_exc.ConnectionError, ka_exc.RetriableConnectionFailure))


@contextmanager
def api(what: str):
    """Turn SDK errors raised inside into one CbmError line: '<what>: <cloud's message>'."""
    try:
        yield
    except CbmError:
        raise
    except os_exc.DuplicateResource as exc:
        raise CbmError(f"{what}: {one_line(exc)}") from None
    except (os_exc.SDKException, ka_exc.ClientException) as exc:
        hint = ""
        if is_transient(exc):
            hint = " (a temporary cloud problem: run the command again, it resumes where it stopped)"
        elif is_quota(exc):
            hint = " (free resources or ask the provider for a larger quota, then run again)"
        raise CbmError(f"{what}: {describe(exc)}{hint}") from None


def connect(spec):
    """An authenticated openstack.Connection for the spec's cloud entry."""
    _quiet_sdk_logs()
    try:
        conn = openstack.connect(cloud=spec.cloud, region_name=spec.region, api_timeout=spec.api_timeout)
    except os_exc.ConfigException as exc:
        files = openstack.config.loader.OpenStackConfig().config_filename
        where = f"in {files}" if files else "in any clouds.yaml (set OS_CLIENT_CONFIG_FILE or create " \
                                           "~/.config/openstack/clouds.yaml)"
        if "was not found" in str(exc):
            raise UserError(f"{spec.where}: key 'cloud': cloud {spec.cloud!r} is not defined {where}") from None
        raise UserError(f"clouds.yaml entry {spec.cloud!r}: {one_line(exc)}") from None
    try:
        conn.authorize()
    except os_exc.HttpException as exc:
        if exc.status_code == 401:
            raise UserError(f"cloud {spec.cloud!r}: authentication failed: check the credentials of this "
                            "entry in clouds.yaml") from None
        raise CbmError(f"cloud {spec.cloud!r}: authentication: {describe(exc)}") from None
    except (os_exc.SDKException, ka_exc.ClientException) as exc:
        text = one_line(exc)
        if "(HTTP 401)" in text:
            raise UserError(f"cloud {spec.cloud!r}: authentication failed: check the credentials of this "
                            "entry in clouds.yaml") from None
        url = (conn.config.get_auth_args() or {}).get("auth_url", "?")
        reason = "timed out" if "timed out" in text.lower() else "no answer" if "connect" in text.lower() \
            else text[:200]
        raise CbmError(f"cloud {spec.cloud!r}: cannot reach the identity service at {url} ({reason})") from None
    return conn


@dataclass(frozen=True)
class Refs:
    """The cloud objects a spec names, resolved to ids."""

    image_id: str
    manager_flavor_id: str
    worker_flavor_id: str
    private_net_id: str
    eodata_net_id: str
    external_net_id: str


def _find(kind: str, key: str, spec, finder, name: str):
    with api(f"looking up {kind} {name!r}"):
        try:
            found = finder(name, ignore_missing=True)
        except os_exc.DuplicateResource:
            raise UserError(f"{spec.where}: key '{key}': {kind} name {name!r} is ambiguous in cloud "
                            f"{spec.cloud!r} (several match): use its id instead") from None
    if found is None:
        raise UserError(f"{spec.where}: key '{key}': {kind} {name!r} not found in cloud {spec.cloud!r}")
    return found


def resolve(conn, spec) -> Refs:
    """Check that image, flavors and networks exist (one clear line if not) and return their ids."""
    image = _find("image", "image", spec, conn.image.find_image, spec.image)
    mflavor = _find("flavor", "flavors.manager", spec, conn.compute.find_flavor, spec.manager_flavor)
    wflavor = _find("flavor", "flavors.worker", spec, conn.compute.find_flavor, spec.worker_flavor)
    private = _find("network", "networks.private", spec, conn.network.find_network, spec.networks.private)
    eodata = _find("network", "networks.eodata", spec, conn.network.find_network, spec.networks.eodata)
    external = _find("network", "networks.floating_pool", spec, conn.network.find_network,
                     spec.networks.floating_pool)
    if not external.is_router_external:
        raise UserError(f"{spec.where}: key 'networks.floating_pool': network {spec.networks.floating_pool!r} "
                        "is not an external network (floating IPs come from the provider's external network)")
    if private.id == eodata.id:
        raise UserError(f"{spec.where}: key 'networks.eodata': it is the same network as networks.private")
    return Refs(image_id=image.id, manager_flavor_id=mflavor.id, worker_flavor_id=wflavor.id,
                private_net_id=private.id, eodata_net_id=eodata.id, external_net_id=external.id)


def wait_for(what: str, fetch, done, failed=None, timeout: float = 900, gone_ok: bool = False):
    """Poll fetch() until done(obj) (or, with gone_ok, until it raises NotFound).

    Shows progress; survives transient errors (5xx, timeouts) by polling on; `failed(obj)` returns a
    message to stop with. Returns the last object (None when gone)."""
    deadline = time.monotonic() + timeout
    interval = 0.3
    last_error = None
    with Waiter(what) as waiter:
        while True:
            try:
                obj = fetch()
                last_error = None
            except os_exc.NotFoundException:
                if gone_ok:
                    return None
                raise CbmError(f"{what}: it disappeared from the cloud while waiting") from None
            except (os_exc.SDKException, ka_exc.ClientException) as exc:
                if not is_transient(exc):
                    raise CbmError(f"{what}: {describe(exc)}") from None
                last_error = exc
                waiter.update(f"cloud error, retrying: {describe(exc)}")
                obj = None
            if obj is not None:
                message = failed(obj) if failed else None
                if message:
                    raise CbmError(f"{what}: {message}")
                if done(obj):
                    return obj
                status = getattr(obj, "status", None) or ""
                waiter.update(f"deleting (status {status})" if gone_ok else status)
            if time.monotonic() >= deadline:
                state = describe(last_error) if last_error else f"still {getattr(obj, 'status', '?')}"
                raise CbmError(f"{what}: gave up after {timeout:.0f} s ({state}); run the command again "
                               "to resume, or raise timeouts.wait in the spec")
            time.sleep(interval)
            interval = min(interval * 1.3, 2.0)


def read(what: str, fetch, timeout: float = 60):
    """One read (GET) that rides out transient errors (5xx, timeouts) for up to `timeout` seconds.
    Reads are safe to repeat; creations are not, so they go through `api` and fail at once."""
    deadline = time.monotonic() + timeout
    delay = 0.3
    while True:
        try:
            return fetch()
        except (os_exc.SDKException, ka_exc.ClientException) as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                with api(what):
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
