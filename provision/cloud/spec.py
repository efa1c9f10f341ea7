"""The deployment spec: one YAML file per agency, validated on load.

    name: dk                         # the deployment's name: state dir, inventory, ownership tags
    cloud: cdse-dk                   # an entry of clouds.yaml (credentials live only there)
    region: WAW3-2                   # optional: the clouds.yaml entry's region otherwise
    prefix: cbm-dk                   # optional: resource name prefix, default cbm-<name>
    image: Ubuntu 22.04 LTS
    flavors: {manager: eo2a.large, worker: eo2a.large}
    workers: 2
    volume: {size: 200, type: null}  # GB; type optional (the cloud's default)
    networks: {private: my-net, eodata: eodata, floating_pool: external}
    eodata:                          # where the workers read products; default {source: mount, root: /eodata}
      source: s3                     # s3: CDSE's S3 endpoint; mount: the /eodata tree on the VMs
      endpoint: https://eodata.cloudferro.com   # s3: the endpoint (URL, or host name for https)
      bucket: eodata                 # s3, default eodata
      credentials_file: ~/.config/cbm/dk-s3.yml # s3: {access_key, secret_key}, mode 0600; or the
                                     #   s3 keys of the deployment's settings (cbm.yml, CBM_S3_*)
    db_port: 11039                   # default 11039
    ingress:                         # required, no default: who may reach SSH and the database
      ssh: [198.51.100.0/24]
      db: [198.51.100.0/24]          # may be [] (only the deployment's own hosts)
    ssh_user: eouser                 # default eouser
    extra_authorized_keys: []        # public keys also allowed to log in (e.g. JRC support)
    tags: [agency-dk]                # added to every resource
    timeouts: {wait: 900, api: 60}   # optional, seconds

Every error names the file and the key, on one line (extractor.errors.UserError).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from extractor.errors import UserError

DEFAULT_DB_PORT = 11039
DEFAULT_SSH_USER = "eouser"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,40}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Nova server tags: at most 60 characters, no '/' and no ',' (tag filters are comma-joined).
TAG_RE = re.compile(r"^[^/,\s]{1,40}$")
KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
             "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")

RESERVED_NAMES = {"sandbox"}
# GB: the least data volume of a manager that runs the extractor image (workers: 0, the continuous mode's
# job): Docker keeps the image (about 0.8 GB) there next to PostGIS's image and the database.
IMAGE_VOLUME_GB = 8
TOP_KEYS = {"name", "cloud", "region", "prefix", "image", "flavors", "workers", "volume", "networks", "eodata",
            "db_port", "ingress", "ssh_user", "extra_authorized_keys", "tags", "timeouts"}


class _ResourceName:
    """A spec attribute that reads as the spec's prefix and a suffix: keypair_name -> 'cbm-dk-key'."""

    def __init__(self, suffix: str):
        self.suffix = suffix

    def __get__(self, spec, owner=None):
        return self if spec is None else f"{spec.prefix}-{self.suffix}"


@dataclass(frozen=True)
class Volume:
    size: int
    type: str | None = None


@dataclass(frozen=True)
class Networks:
    private: str
    eodata: str
    floating_pool: str


@dataclass(frozen=True)
class Eodata:
    """Where the workers read the products (extractor/extract/storage.py)."""
    source: str = "mount"
    root: str = "/eodata"
    endpoint: str | None = None
    bucket: str = "eodata"
    credentials_file: str | None = None   # a controller path (expanded); None: the settings' keys


@dataclass(frozen=True)
class Ingress:
    ssh: tuple[str, ...]
    db: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    cloud: str
    region: str | None
    prefix: str
    image: str
    manager_flavor: str
    worker_flavor: str
    workers: int
    volume: Volume
    networks: Networks
    db_port: int
    ingress: Ingress
    eodata: Eodata = Eodata()
    ssh_user: str = DEFAULT_SSH_USER
    extra_authorized_keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    wait_timeout: int = 900
    api_timeout: int = 60
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    shown: str = ""      # the path as the user gave it, for messages

    @property
    def where(self) -> str:
        return self.shown or str(self.path)

    # Resource names (ownership is never decided by name: see provision/cloud/ownership.py).
    keypair_name = _ResourceName("key")
    security_group_name = _ResourceName("sg")
    volume_name = _ResourceName("data")
    manager_name = _ResourceName("manager")

    def worker_name(self, index: int) -> str:
        return f"{self.prefix}-worker-{index}"

    @property
    def inventory_path(self) -> Path:
        """The Ansible inventory written by `cbm up`, next to the spec."""
        return self.path.parent / "hosts.yml"

    def require_image_room(self, why: str) -> None:
        """UserError (one line) unless the manager's data volume has room for the extractor image."""
        problem = _image_room_problem(self.volume.size, why)
        if problem:
            raise UserError(f"{self.where}: key 'volume.size': {problem}")


def _image_room_problem(size: int, why: str) -> str | None:
    if size >= IMAGE_VOLUME_GB:
        return None
    return (f"{size} GB is too small for {why}: the manager's data volume holds the extractor image (about 0.8 GB) "
            f"next to PostGIS; set it to at least {IMAGE_VOLUME_GB} (cbm up does not resize a volume it made: "
            "extend that one in the cloud and grow its filesystem)")


class _Checker:
    """Reads values out of the YAML mapping; every complaint names the file and the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, problem: str):
        raise UserError(f"{self.path}: key '{key}': {problem}")

    def mapping(self, data, key: str, allowed: set[str]) -> dict:
        if not isinstance(data, dict):
            self.fail(key, f"must be a mapping with keys {', '.join(sorted(allowed))}")
        for k in data:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                self.fail(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return data

    def required(self, data: dict, key: str, full: str | None = None):
        full = full or key
        if data.get(key) in (None, ""):
            self.fail(full, "is required")
        return data[key]

    def string(self, data: dict, key: str, full: str | None = None, default=None, pattern=None,
               hint: str = "") -> str | None:
        full = full or key
        value = data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(full, f"must be a non-empty string, got {value!r}")
        if pattern is not None and not pattern.match(value):
            self.fail(full, f"{value!r} is not valid{': ' + hint if hint else ''}")
        return value

    def integer(self, data: dict, key: str, full: str | None = None, default=None, lo=None, hi=None) -> int:
        full = full or key
        value = data.get(key, default)
        if value is None:
            self.fail(full, "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(full, f"must be a whole number, got {value!r}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            self.fail(full, f"must be {bounds}, got {value}")
        return value

    def string_list(self, data: dict, key: str, full: str | None = None) -> list:
        full = full or key
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(full, f"must be a list of strings, got {value!r}")
        return value


def check_cidr(checker: _Checker, key: str, value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        checker.fail(key, f"{value!r} is not a CIDR like 198.51.100.0/24 ({exc})")
    if net.prefixlen == 0:
        checker.fail(key, f"{value} opens the port to the whole internet; list the networks that need "
                          "access (office, VPN, bastion)")
    return str(net)


def parse_eodata(c: _Checker, data, spec_dir: Path) -> Eodata:
    if data is None:
        return Eodata()
    e = c.mapping(data, "eodata", {"source", "root", "endpoint", "bucket", "credentials_file"})
    source = c.string(e, "source", "eodata.source", default="mount")
    if source == "mount":
        for key in ("endpoint", "bucket", "credentials_file"):
            if key in e:
                c.fail(f"eodata.{key}", "belongs to source: s3; remove it or set eodata.source: s3")
        root = c.string(e, "root", "eodata.root", default="/eodata")
        if not root.startswith("/"):
            c.fail("eodata.root", f"{root!r} must be an absolute path on the workers, e.g. /eodata")
        return Eodata(source="mount", root=root)
    if source != "s3":
        c.fail("eodata.source", f"{source!r} is unknown; use s3 or mount")
    if "root" in e:
        c.fail("eodata.root", "belongs to source: mount; remove it or set eodata.source: mount")
    endpoint = c.string(e, "endpoint", "eodata.endpoint") or c.fail(
        "eodata.endpoint", "is required for source: s3, e.g. https://eodata.cloudferro.com")
    if "://" in endpoint and endpoint.split("://", 1)[0].lower() not in ("http", "https"):
        c.fail("eodata.endpoint", f"{endpoint!r} must start with https:// or http:// (or be a host name)")
    bucket = c.string(e, "bucket", "eodata.bucket", default="eodata")
    creds = c.string(e, "credentials_file", "eodata.credentials_file")
    if creds:
        creds = str((spec_dir / Path(creds).expanduser()).resolve())
    return Eodata(source="s3", endpoint=endpoint, bucket=bucket, credentials_file=creds)


def check_public_key(checker: _Checker, key: str, value: str) -> str:
    parts = value.split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        checker.fail(key, "is not an OpenSSH public key ('ssh-ed25519 AAAA... comment')")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        (length,) = struct.unpack(">I", blob[:4])
        ok = blob[4:4 + length].decode() == parts[0]
    except (binascii.Error, struct.error, UnicodeDecodeError):
        ok = False
    if not ok:
        checker.fail(key, f"the {parts[0]} key data is damaged (copy the whole line of the .pub file)")
    return " ".join(parts)


def parse(data, path: Path, shown: Path | None = None) -> Spec:
    """Validate a spec mapping (as read from YAML) and return the Spec (errors name `shown`)."""
    c = _Checker(shown or path)
    c.mapping(data, "", TOP_KEYS)
    name = c.string(data, "name", pattern=NAME_RE,
                    hint="lower-case letters, digits and '-', starting with a letter, at most 32") \
        or c.fail("name", "is required")
    if name in RESERVED_NAMES:
        c.fail("name", f"{name!r} is reserved (the sandbox cloud keeps its own state under that name); choose another")
    cloud = c.string(data, "cloud") or c.fail("cloud", "is required (an entry of clouds.yaml)")
    region = c.string(data, "region")
    prefix = c.string(data, "prefix", default=f"cbm-{name}", pattern=PREFIX_RE,
                      hint="letters, digits and '-', starting with a letter")
    image = c.string(data, "image") or c.fail("image", "is required (an image name of the cloud)")

    flavors = c.mapping(c.required(data, "flavors"), "flavors", {"manager", "worker"})
    manager_flavor = c.string(flavors, "manager", "flavors.manager") or c.fail("flavors.manager", "is required")
    worker_flavor = c.string(flavors, "worker", "flavors.worker") or c.fail("flavors.worker", "is required")

    workers = c.integer(data, "workers", lo=0, hi=100)

    vol = c.mapping(c.required(data, "volume"), "volume", {"size", "type"})
    volume = Volume(size=c.integer(vol, "size", "volume.size", lo=1, hi=65536),
                    type=c.string(vol, "type", "volume.type"))
    if workers == 0 and (problem := _image_room_problem(volume.size, "workers: 0")):
        c.fail("volume.size", problem)

    nets = c.mapping(c.required(data, "networks"), "networks", {"private", "eodata", "floating_pool"})
    networks = Networks(**{k: c.string(nets, k, f"networks.{k}") or c.fail(f"networks.{k}", "is required")
                           for k in ("private", "eodata", "floating_pool")})

    db_port = c.integer(data, "db_port", default=DEFAULT_DB_PORT, lo=1024, hi=65535)
    if db_port in (2377, 7946, 4789):
        c.fail("db_port", f"{db_port} is a Docker Swarm port; choose another (default {DEFAULT_DB_PORT})")

    if "ingress" not in data:
        c.fail("ingress", "is required: list the CIDRs allowed to reach SSH and the database "
                          "(ingress: {ssh: [198.51.100.0/24], db: [198.51.100.0/24]}); there is no default")
    ing = c.mapping(data["ingress"], "ingress", {"ssh", "db"})
    if not ing.get("ssh"):
        c.fail("ingress.ssh", "is required: the CIDRs allowed to SSH to the manager, e.g. [198.51.100.0/24]")
    if "db" not in ing:
        c.fail("ingress.db", "is required: the CIDRs allowed to reach the database port ([] for none)")
    ingress = Ingress(
        ssh=tuple(check_cidr(c, "ingress.ssh", v) for v in c.string_list(ing, "ssh", "ingress.ssh")),
        db=tuple(check_cidr(c, "ingress.db", v) for v in c.string_list(ing, "db", "ingress.db")))

    eodata = parse_eodata(c, data.get("eodata"), path.parent)
    ssh_user = c.string(data, "ssh_user", default=DEFAULT_SSH_USER, pattern=USER_RE, hint="a Unix user name")
    keys = tuple(check_public_key(c, "extra_authorized_keys", v)
                 for v in c.string_list(data, "extra_authorized_keys"))
    tags = tuple(c.string_list(data, "tags"))
    for tag in tags:
        if not TAG_RE.match(tag) or tag.startswith(("cbm-deployment", "cbm-role")):
            c.fail("tags", f"{tag!r} is not valid: at most 40 characters without '/', ',' or spaces, "
                           "not starting with cbm-deployment or cbm-role (reserved)")

    tmo = c.mapping(data.get("timeouts") or {}, "timeouts", {"wait", "api"})
    wait_timeout = c.integer(tmo, "wait", "timeouts.wait", default=900, lo=1)
    api_timeout = c.integer(tmo, "api", "timeouts.api", default=60, lo=1)

    return Spec(path=path, name=name, cloud=cloud, region=region, prefix=prefix, image=image,
                manager_flavor=manager_flavor, worker_flavor=worker_flavor, workers=workers, volume=volume,
                networks=networks, db_port=db_port, ingress=ingress, eodata=eodata, ssh_user=ssh_user,
                extra_authorized_keys=keys, tags=tags, wait_timeout=wait_timeout, api_timeout=api_timeout,
                raw=data, shown=str(shown or path))


def load(path: str | Path) -> Spec:
    """Read and validate a deployment spec; UserError (one line) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: no such deployment spec (see inventories/example/deployment.yml)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the deployment spec: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise UserError(f"{path}: the deployment spec is empty (see inventories/example/deployment.yml)")
    return parse(data, path.resolve(), shown=path)
