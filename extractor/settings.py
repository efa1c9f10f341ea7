"""Settings: one YAML file plus environment variables named after its keys.

Where the file is found (first that applies):
  1. `--config FILE`
  2. `$CBM_CONFIG`
  3. `./cbm.yml` in the working directory
  4. `$XDG_CONFIG_HOME/cbm/config.yml` (default `~/.config/cbm/config.yml`)
No file at all is fine: every key has a default or comes from the environment.

The file has sections; `CBM_<SECTION>_<KEY>` overrides a key (e.g. `CBM_CATALOG_URL`,
`CBM_EODATA_ROOT`, `CBM_DB_HOST`). The database connection also honours libpq's own
variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGPASSFILE): keys left empty are
not passed to libpq, so libpq applies its variables and defaults itself.

Secrets never go in argv: the database password comes from PGPASSWORD, PGPASSFILE (~/.pgpass)
or `db.password_file` (a file holding only the password, mode 0600). S3 keys come from
`s3.credentials_file` (mode 0600) or are set in the file or as CBM_S3_ACCESS_KEY /
CBM_S3_SECRET_KEY; `cbm config show` masks them.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from extractor.errors import UserError

# section -> key -> default. The type of the default is the type of the key (None = string).
DEFAULTS: dict[str, dict[str, Any]] = {
    "db": {
        "host": None,          # libpq PGHOST / default socket when empty
        "port": None,          # int; libpq PGPORT / 5432 when empty
        "name": None,          # libpq PGDATABASE when empty
        "user": None,          # libpq PGUSER when empty
        "password_file": None, # file with the password only, mode 0600
        "schema": "public",
        "connect_timeout": 10,
        "worker_user": "cbm_worker",   # the extraction workers' role, made by `cbm db init` (extractor/grants.py)
        "worker_password_file": None,  # its password (0600): `cbm db init` sets it; none: the role cannot log in
    },
    "tables": {
        "aois": "aois",
        "catalogue": "dias_catalogue",
        "sigs": "sigs",
        "hists": "hists",
    },
    "catalog": {
        "url": "https://catalogue.dataspace.copernicus.eu/resto/api/collections",
        "page_size": 2000,     # maxRecords, 1..2000
        "max_offset": 10000,   # the API refuses offsets beyond this: windows are split below it
        "timeout": 60,         # seconds per request
        "retries": 5,          # for HTTP 429 / 5xx / timeouts
        "backoff": 2.0,        # seconds, doubled per retry
    },
    "eodata": {                # where the products are (extractor/extract/storage.py)
        "source": "mount",     # mount: a mounted tree (must be a mount point); s3: the s3 section;
                               # folder: a plain folder of products (tests, products copied by hand)
        "root": "/eodata",     # where productIdentifier paths (/eodata/...) are (mount, folder)
    },
    "s3": {
        "endpoint": None,      # https://eodata.dataspace.copernicus.eu, or a host (then s3.https decides)
        "bucket": "eodata",
        "credentials_file": None,  # YAML/JSON {access_key, secret_key} (or the seed's {"s3": {...}}), 0600
        "access_key": None,    # or the keys themselves (CBM_S3_ACCESS_KEY / CBM_S3_SECRET_KEY)
        "secret_key": None,
        "path_style": True,
        "https": True,
    },
    "odp": {                   # CARD on demand: the CDSE On-Demand Production API (extractor/odp.py)
        "url": "https://odp.dataspace.copernicus.eu/odata/v1",
        "token_url": "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token",
        "credentials_file": None,  # YAML {username, password, totp_secret?}, mode 0600 (or CDSE_* variables)
        "batch_size": 25,      # inputs per batch order
        "timeout": 60,         # seconds per request
        "retries": 5,          # for HTTP 429 / 503 / timeouts
        "backoff": 2.0,        # seconds, doubled per retry (a Retry-After header wins)
    },
    "extract": {               # the extraction workers (extractor/extract, docs/extraction.md)
        "aoi": None,           # AOI name in the aois table (or --aoi)
        "parcels": None,       # parcel table (or --parcels)
        "start": None,         # YYYY-MM-DD, first obstime (inclusive; or --start)
        "end": None,           # YYYY-MM-DD, last obstime (exclusive; or --end)
        "lease": 300,          # seconds a claim stays valid without a heartbeat
        "max_attempts": 3,     # claims of one scene run before it gets the status 'Max attempts'
        "poll": 5.0,           # seconds between looks while other workers still hold leases
        "threads": "ALL_CPUS", # GDAL_NUM_THREADS for decoding
        "backoff": 5.0,        # seconds a worker waits after a storage fault (doubled up to 120 s)
        "outage_wait": 3600,   # seconds a worker waits for its storage or database to answer again before it exits
        "scene_timeout": 3600.0,  # seconds one scene may take from its claim (a full S2 tile at 10 m: minutes)
        "s2_runs": "-1,10,20", # the runs that make an s2 scene 'extracted'
        "s2_scl_band": "SCL",
        "s2_10_bands": "B02,B03,B04,B08",
        "s2_20_bands": "B05,B06,B07,B8A,B11,B12",
        "bs_bands": "VV,VH",
        "c6_bands": "VV,VH",
    },
}

SECRET_KEYS = {("s3", "access_key"), ("s3", "secret_key")}
EODATA_SOURCES = ("mount", "s3", "folder")
INT_KEYS = {("db", "port")}
ENV_PREFIX = "CBM_"


def config_path(explicit: str | None = None) -> Path | None:
    """The settings file to read, following the documented order; None if there is none."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; fix the --config path")
        return path
    env = os.environ.get("CBM_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise UserError(f"config file {path} (from $CBM_CONFIG) does not exist; fix or unset CBM_CONFIG")
        return path
    local = Path.cwd() / "cbm.yml"
    if local.is_file():
        return local
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user = base / "cbm" / "config.yml"
    return user if user.is_file() else None


def _coerce(section: str, key: str, value: Any, origin: str) -> Any:
    default = DEFAULTS[section][key]
    want = int if (section, key) in INT_KEYS else (type(default) if default is not None else str)
    if value is None:
        return None
    if want is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    elif want is int and not isinstance(value, bool):
        try:
            return int(str(value).strip())
        except ValueError:
            pass
    elif want is float and not isinstance(value, bool):
        try:
            return float(str(value).strip())
        except ValueError:
            pass
    elif want is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise UserError(f"{origin}: {section}.{key} must be {want.__name__}, got {value!r}; fix that value")


class Settings(SimpleNamespace):
    """Effective settings: `settings.db.host`, `settings.catalog.url`, ...; `.source` is the file."""

    def as_dict(self, masked: bool = True) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for section in DEFAULTS:
            values = vars(getattr(self, section))
            out[section] = {
                k: ("****" if masked and (section, k) in SECRET_KEYS and v else v) for k, v in values.items()
            }
        return out


def load(explicit: str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Read the settings file (if any) and apply CBM_* environment variables on top."""
    environ = os.environ if environ is None else environ
    path = config_path(explicit)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise UserError(f"config file {path}{where} is not valid YAML; fix its syntax") from None
        except OSError as exc:
            raise UserError(f"config file {path} cannot be read ({exc.strerror}); fix its permissions") from None
        if not isinstance(data, dict):
            raise UserError(f"config file {path} must be a mapping of sections (db:, catalog:, ...); fix its layout")
    origin = str(path) if path else "settings"
    held = sorted(f"{sec}.{key}" for sec, key in SECRET_KEYS
                  if isinstance(data.get(sec), dict) and data[sec].get(key) not in (None, ""))
    if held and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"config file {path} holds secrets ({', '.join(held)}) and others can read it; "
                        f"run: chmod 600 {path}")
    values: dict[str, dict[str, Any]] = {s: dict(keys) for s, keys in DEFAULTS.items()}
    for section, keys in data.items():
        if section not in DEFAULTS:
            raise UserError(f"{origin}: unknown section '{section}'; known: {', '.join(DEFAULTS)}")
        if keys is None:
            continue
        if not isinstance(keys, dict):
            raise UserError(f"{origin}: section '{section}' must be a mapping of keys; fix its layout")
        for key, value in keys.items():
            if key not in DEFAULTS[section]:
                raise UserError(
                    f"{origin}: unknown key '{section}.{key}'; known: {', '.join(DEFAULTS[section])}")
            values[section][key] = _coerce(section, key, value, origin)
    for section, keys in DEFAULTS.items():
        for key in keys:
            name = f"{ENV_PREFIX}{section}_{key}".upper()
            if name in environ and environ[name] != "":
                values[section][key] = _coerce(section, key, environ[name], f"${name}")
    settings = Settings(**{s: SimpleNamespace(**v) for s, v in values.items()})
    settings.source = path
    _validate(settings, origin)
    return settings


IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(name: str, what: str) -> str:
    """A table/schema name from config or the command line: letters, digits, underscore."""
    if not isinstance(name, str) or not IDENT.match(name):
        raise UserError(f"{what} {name!r} is not a valid table name; use letters, digits and _ (max 63)")
    return name


def _validate(settings: Settings, origin: str) -> None:
    check_identifier(settings.db.schema, f"{origin}: db.schema")
    worker = settings.db.worker_user
    if not IDENT.match(worker or "") or worker.lower().startswith("pg_") or worker.lower() == "postgres":
        raise UserError(f"{origin}: db.worker_user {worker!r} is not a valid name for the workers' role; use "
                        "letters, digits and _ (max 63), not postgres nor a name starting with pg_")
    for key, name in vars(settings.tables).items():
        check_identifier(name, f"{origin}: tables.{key}")
    if not 1 <= settings.catalog.page_size <= 2000:
        raise UserError(f"{origin}: catalog.page_size must be between 1 and 2000 (the API's limit)")
    if settings.db.port is not None and not 0 < settings.db.port < 65536:
        raise UserError(f"{origin}: db.port {settings.db.port} is not a TCP port; fix db.port")
    timeout = settings.extract.scene_timeout
    if not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"{origin}: extract.scene_timeout {timeout:g} is not a positive number of seconds; "
                        "set it (or CBM_EXTRACT_SCENE_TIMEOUT) to e.g. 3600")
    if settings.eodata.source not in EODATA_SOURCES:
        raise UserError(f"{origin}: eodata.source {settings.eodata.source!r} is unknown; use one of "
                        f"{', '.join(EODATA_SOURCES)}")
    if settings.eodata.source == "s3" and not settings.s3.endpoint:
        raise UserError(f"{origin}: eodata.source is s3 but s3.endpoint is empty; set s3.endpoint "
                        "(e.g. https://eodata.dataspace.copernicus.eu)")
    if settings.s3.endpoint and "://" in settings.s3.endpoint \
            and settings.s3.endpoint.split("://", 1)[0].lower() not in ("http", "https"):
        raise UserError(f"{origin}: s3.endpoint {settings.s3.endpoint!r} must start with https:// or http:// "
                        "(or be a host name)")


def read_secret_file(path: str, what: str) -> str:
    """Read a secret kept in a file of its own; refuse files others can read."""
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
        text = p.read_text()
    except OSError as exc:
        raise UserError(f"{what} {p} cannot be read ({exc.strerror}); fix the path") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"{what} {p} is readable by others; run: chmod 600 {p}")
    secret = text.strip()
    if not secret:
        raise UserError(f"{what} {p} is empty; write the password into it")
    return secret
