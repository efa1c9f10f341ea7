"""Where a worker finds the products, whether that storage answers, and which failures are final.

Sources (settings `eodata.source`):
  mount   the eodata tree mounted at eodata.root (CDSE VMs: /eodata); it must be a mount point
  folder  a plain folder of products at eodata.root (tests, products copied by hand)
  s3      the S3 bucket s3.bucket at s3.endpoint, path-style, read by GDAL as /vsis3/<bucket>/<key>
The object key (or the path under eodata.root) is the catalogue's product_path without '/eodata/'.

S3 keys come from s3.credentials_file (YAML/JSON {access_key, secret_key}, or the seed's
s3_config.json {"s3": {...}}; mode 0600, re-read for every scene so rotated keys are picked up) or
s3.access_key/s3.secret_key. They reach GDAL as options of the bucket's path (vsi.set_path_options;
rasterio refuses AWS keys as plain config options), never through the environment, argv or a log
line. Without keys requests go unsigned.

Failures: `check()` at a worker's start raises a one-line CbmError when the storage does not answer
(the mount is not mounted or empty, the endpoint is unreachable or refuses the keys). During a scene
`StorageFault` means "not the scene's fault": the scene goes back to the queue. A scene gets a final
status only with proof: the storage answers and the object is not there (No band file), or the
storage answers, the object is there and GDAL fails on it twice (Rio error).
"""

from __future__ import annotations

import errno
import os
import re
import secrets

import rasterio
import yaml

from extractor.errors import CbmError, UserError, one_line
from extractor.extract import vsi

EODATA_PREFIX = "/eodata/"
# errno of a storage that did not answer (a mount gone stale or away), never of a missing file
TRANSIENT_ERRNO = {errno.EIO, errno.ESTALE, errno.ENOTCONN, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                   errno.ECONNABORTED, errno.ECONNRESET, errno.ENODEV, errno.EAGAIN}
HTTP_CODE = re.compile(r"HTTP response code(?: on \S+)?: (\d+)")


class StorageFault(Exception):
    """The storage did not answer (network, server, mount): the scene is given back, never final."""


def is_s3(settings) -> bool:
    return settings.eodata.source == "s3"


def endpoint(settings) -> tuple[str, bool]:
    """(host[:port], https) of s3.endpoint: a URL's scheme decides https, a bare host uses s3.https."""
    text = settings.s3.endpoint.strip().rstrip("/")
    if "://" in text:
        scheme, host = text.split("://", 1)
        return host.split("/", 1)[0], scheme.lower() == "https"
    return text, bool(settings.s3.https)


def describe(settings) -> str:
    """The storage in words, for messages (no keys)."""
    if is_s3(settings):
        host, https = endpoint(settings)
        return f"S3 bucket {settings.s3.bucket} at {'https' if https else 'http'}://{host}"
    return f"the eodata {settings.eodata.source} {settings.eodata.root}"


def read_keys_file(path: str, what: str = "s3.credentials_file") -> tuple[str, str]:
    """(access_key, secret_key) from a keys file: YAML/JSON {access_key, secret_key} or the seed's
    s3_config.json {"s3": {...}}; refused unless mode 0600 (the message never holds a key)."""
    from extractor.settings import read_secret_file  # lazy: settings imports nothing of extract

    text = read_secret_file(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("s3"), dict):
        data = data["s3"]
    if not (isinstance(data, dict) and data.get("access_key") and data.get("secret_key")):
        raise UserError(f"{what} {path} must hold access_key and secret_key (YAML or JSON); fix the file")
    return str(data["access_key"]), str(data["secret_key"])


def s3_keys(settings) -> tuple[str, str] | None:
    """The S3 keys: s3.credentials_file, else s3.access_key/secret_key, else None (unsigned)."""
    s3 = settings.s3
    if s3.credentials_file:
        return read_keys_file(s3.credentials_file)
    if s3.access_key and s3.secret_key:
        return s3.access_key, s3.secret_key
    return None


def gdal_options(settings) -> dict:
    """GDAL config for reading (no keys): decoding threads; for S3 the endpoint, path style,
    retries and timeouts. Ranged reads: GDAL fetches the byte ranges a window needs, nothing more."""
    opts = {"GDAL_NUM_THREADS": str(settings.extract.threads), "GDAL_CACHEMAX": 256}
    if is_s3(settings):
        host, https = endpoint(settings)
        opts.update({
            "AWS_S3_ENDPOINT": host,  # host only: a scheme here breaks GDAL's URL
            "AWS_HTTPS": "YES" if https else "NO",
            "AWS_VIRTUAL_HOSTING": "FALSE" if settings.s3.path_style else "TRUE",
            "AWS_DEFAULT_REGION": "default",
            # only the band files and ENVI headers: no requests for the metadata files GDAL looks
            # for next to a band (<file>.xml, _metadata.xml: 4 GETs and listings per open)
            "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".jp2,.tif,.tiff,.img,.hdr",
            "GDAL_HTTP_MAX_RETRY": "3", "GDAL_HTTP_RETRY_DELAY": "1",
            "GDAL_HTTP_CONNECTTIMEOUT": "20", "GDAL_HTTP_TIMEOUT": "120",
            # no folder listing on open (the files were listed already; siblings such as the ENVI .hdr are
            # still asked for one by one), no .aux.xml probes
            "GDAL_DISABLE_READDIR_ON_OPEN": "TRUE", "GDAL_PAM_ENABLED": "NO",
            "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",  # bytes fetched per scene (fetched())
        })
        if s3_keys(settings) is None:
            opts["AWS_NO_SIGN_REQUEST"] = "YES"
    return opts


def env(settings) -> rasterio.Env:
    """The rasterio.Env every read of the products runs in. The S3 keys are set (again: the file may
    have new keys) as GDAL options of the bucket's path, not of the Env (see vsi.set_path_options)."""
    if is_s3(settings):
        keys = s3_keys(settings)
        vsi.set_path_options(f"/vsis3/{settings.s3.bucket}", {"AWS_ACCESS_KEY_ID": keys[0],
                                                              "AWS_SECRET_ACCESS_KEY": keys[1]} if keys else {})
    return rasterio.Env(**gdal_options(settings))


def product_location(settings, product_path: str) -> str:
    key = product_path[len(EODATA_PREFIX):] if product_path.startswith(EODATA_PREFIX) else product_path.lstrip("/")
    key = key.rstrip("/")
    if is_s3(settings):
        return f"/vsis3/{settings.s3.bucket}/{key}"
    return os.path.join(settings.eodata.root, key)


def start_counting(settings) -> None:
    """Count the bytes fetched from here on (S3 only)."""
    if is_s3(settings):
        vsi.network_stats_reset()


def fetched(settings) -> int | None:
    """Bytes fetched from S3 since start_counting(); None for a mount or folder."""
    return vsi.network_bytes() if is_s3(settings) else None


# -- does the storage answer ------------------------------------------------------------------
def problem(settings) -> str | None:
    """Why the storage does not answer, or None when it does (cheap: one request or one listing)."""
    if is_s3(settings):
        vsi.clear_cache()
        with env(settings):
            # one name at the top of the bucket: the endpoint answers, takes the keys, the bucket has products
            names, _ = vsi.read_dir(f"/vsis3/{settings.s3.bucket}/", 1)
            if names:
                return None
            # why not: ask for a key that is never there and read the HTTP status
            size, err = vsi.stat_size(f"/vsis3/{settings.s3.bucket}/cbm-probe-{secrets.token_hex(4)}.tif")
        code = _http_code(err)
        if code in (401, 403) or err.refused_keys:
            return f"{describe(settings)} refuses the access keys (HTTP {code}); check s3.credentials_file"
        if code == 404 or size is not None:
            return (f"{describe(settings)} lists no product (HTTP {code or 200}); check s3.endpoint and s3.bucket")
        if code:
            return f"{describe(settings)} answers HTTP {code}"
        return f"{describe(settings)} does not answer (no connection); check s3.endpoint and the network"
    root = settings.eodata.root
    try:
        if not os.path.isdir(root):
            return f"{describe(settings)} is not a folder; mount the eodata tree there or fix eodata.root"
        if settings.eodata.source == "mount" and not os.path.ismount(root):
            return (f"{describe(settings)} is not a mount point (the eodata tree is not mounted); mount it, "
                    "or set eodata.source: folder for a plain folder of products")
        with os.scandir(root) as entries:
            if next(entries, None) is None:
                return f"{describe(settings)} is empty (the eodata tree is not mounted); mount it or fix eodata.root"
    except OSError as exc:
        return f"{describe(settings)} does not answer ({exc.strerror or exc})"
    return None


def check(settings) -> None:
    """A worker's start: one line naming the cause when the storage does not answer."""
    why = problem(settings)
    if why:
        raise CbmError(f"{why}; no scene was claimed")


def _http_code(err: vsi.VsiError) -> int | None:
    m = HTTP_CODE.search(err.message)
    if m:
        return int(m.group(1)) or None  # 0: no HTTP answer at all
    if err.not_found:
        return 404
    return None


# -- listing and failures during a scene -------------------------------------------------------
def list_dir(settings, path: str) -> list[str]:
    """Names directly inside a folder; [] only when the storage answers and the folder is not
    there; StorageFault when the storage does not answer."""
    if path.startswith("/vsis3/"):
        with env(settings):
            names, _ = vsi.read_dir(path.rstrip("/") + "/")
        if names:
            return names
        # nothing: a folder that is not there, or a storage that failed. Ask the storage, and
        # list once more without GDAL's cache (it may hold the failed listing).
        _raise_if_down(settings)
        vsi.clear_cache()
        with env(settings):
            names, _ = vsi.read_dir(path.rstrip("/") + "/")
        return names or []
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        _raise_if_down(settings)
        return []
    except OSError as exc:
        raise StorageFault(f"{path}: {exc.strerror or exc}") from None


def _raise_if_down(settings) -> None:
    why = problem(settings)
    if why:
        vsi.clear_cache()
        raise StorageFault(why)


def read_failed(settings, path: str, exc: Exception) -> Exception | None:
    """After GDAL failed on `path`: StorageFault when the storage does not answer (the caller gives
    the scene back); None when it answers and the file is there (the caller tries once more);
    FileNotFoundError when it answers and the file is gone."""
    vsi.clear_cache()
    why = problem(settings)
    if why:
        return StorageFault(f"{why} ({one_line(exc, 160)})")
    if path.startswith("/vsis3/"):
        with env(settings):
            size, err = vsi.stat_size(path)
        if size is None:
            if _http_code(err) == 404:
                return FileNotFoundError(path)
            return StorageFault(f"{path}: {one_line(err.message, 160)}")
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        return FileNotFoundError(path)
    except OSError as e:
        if e.errno in TRANSIENT_ERRNO:
            return StorageFault(f"{path}: {e.strerror}")
        raise
    return None
