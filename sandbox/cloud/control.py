"""Start, stop, inspect and steer the sandbox service (the Python API behind `cbm sandbox ...`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from extractor.errors import CbmError, UserError
from sandbox.cdse import CdseStandIns
from sandbox.cloud import hostimage
from sandbox.cloud.backend import Backend
from sandbox.processes import terminate
from sandbox.s3 import EodataS3

log = logging.getLogger(__name__)

CLOUD_NAME = "cbm-sandbox"
STATE_FILE = "state.json"
OWN_FILES = ("state.json", "state.tmp", "clouds.yaml", "sandbox.pid", "sandbox.log", "ready")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "cbm" / "sandbox"


def code_version() -> str:
    """A digest of the sandbox's code: a service started from other code is restarted by start()."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class Sandbox:
    """One sandbox cloud, identified by its state directory."""

    cloud_name = CLOUD_NAME

    def __init__(self, state_dir: str | Path | None = None, port: int | None = None, eodata: str | Path | None = None):
        self.state_dir = Path(state_dir).expanduser().resolve() if state_dir else default_state_dir()
        self.port = port
        self.eodata = Path(eodata).expanduser().resolve() if eodata else None

    # -- files -------------------------------------------------------------------------------
    @property
    def clouds_yaml(self) -> Path:
        return self.state_dir / "clouds.yaml"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "sandbox.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "sandbox.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point openstacksdk (and `cbm`) at this sandbox."""
        return {"OS_CLIENT_CONFIG_FILE": str(self.clouds_yaml), "OS_CLOUD": CLOUD_NAME}

    def state(self) -> dict | None:
        path = self.state_dir / STATE_FILE
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def url(self) -> str:
        st = self.state()
        if not st or not st.get("port"):
            raise CbmError(f"the sandbox in {self.state_dir} has never been started; run: cbm sandbox start")
        return f"http://127.0.0.1:{st['port']}"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    @property
    def running(self) -> bool:
        return self.pid() is not None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 300) -> "Sandbox":
        """Run the service in the background (idempotent) and write clouds.yaml; returns self."""
        if self.running and self.served_code() not in (None, code_version()):
            log.warning("the sandbox service in %s runs older code: restarting it (its hosts keep running)",
                        self.state_dir)
            self.stop()
        if self.running:
            if self.eodata and (self.state() or {}).get("eodata") != str(self.eodata):
                raise UserError(f"the sandbox in {self.state_dir} already runs with another eodata folder; "
                                "stop it first (cbm sandbox stop)")
            self._wait_ready(timeout)
            return self._serve()
        if shutil.which("docker") is None:
            raise UserError("docker: command not found; run scripts/bootstrap.sh (the sandbox runs hosts as "
                            "containers)")
        if os.geteuid() != 0:
            raise UserError("the sandbox needs root (loop devices, host containers); run it as root")
        if self.eodata is not None and not self.eodata.is_dir():
            raise UserError(f"--eodata {self.eodata}: not a directory; create it or pass another folder")
        hostimage.ensure_host_image()  # here, not in the service: a failure is a one-line error
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        port = self.port or (self.state() or {}).get("port") or _free_port()
        (self.state_dir / "ready").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "sandbox.cloud.service", "--state-dir", str(self.state_dir),
               "--port", str(port)]
        if self.eodata:
            cmd += ["--eodata", str(self.eodata)]
        repo = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.state_dir, env=env)
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_ready(timeout, proc)
        except CbmError:
            if proc.poll() is None:
                proc.terminate()
            raise
        return self._serve()

    def _serve(self) -> "Sandbox":
        """The cloud answers: write its clouds.yaml and make sure the eodata S3 server runs."""
        self.write_clouds_yaml()
        self.s3.eodata.mkdir(parents=True, exist_ok=True)
        self.s3.start()
        self.cdse.start()
        return self

    # -- the eodata S3 stand-in ------------------------------------------------------------
    @property
    def s3(self) -> EodataS3:
        """The S3 server serving the sandbox's eodata folder (sandbox/s3.py), as on CDSE."""
        st = self.state() or {}
        return EodataS3(self.state_dir, Path(st.get("eodata") or self.eodata or self.state_dir / "eodata"))

    @property
    def cdse(self) -> CdseStandIns:
        """The CDSE catalog and On-Demand Production stand-ins (sandbox/cdse.py) over the eodata folder."""
        return CdseStandIns(self.state_dir, self.s3.eodata)

    def eodata_endpoint(self) -> str:
        """The S3 endpoint as the sandbox's servers reach it: the host's address on the eodata network."""
        st = self.state() or {}
        for net in (st.get("networks") or {}).values():
            if net.get("cbm:eodata") and net.get("subnets"):
                gateway = st["subnets"][net["subnets"][0]]["cbm:docker_gateway"]
                return self.s3.endpoint(gateway)
        raise CbmError(f"the sandbox in {self.state_dir} has no eodata network; run: cbm sandbox start")

    def republish_eodata(self) -> None:
        """Serve the eodata folder again after products were added to it (new keys, same port)."""
        self.s3.stop()
        self.s3.start()

    def _wait_ready(self, timeout: float, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise CbmError(f"the sandbox service exited with code {proc.returncode}; see {self.log_file}")
            if (self.state_dir / "ready").exists():
                try:
                    with urllib.request.urlopen(self.url + "/identity/v3", timeout=2) as r:
                        if r.status == 200:
                            return
                except (OSError, urllib.error.URLError, CbmError):
                    pass
            time.sleep(0.1)
        raise CbmError(f"the sandbox service did not answer within {timeout:.0f} s; see {self.log_file}")

    def served_code(self) -> str | None:
        """The code version the running service was started with (None before it is ready)."""
        try:
            return json.loads((self.state_dir / "ready").read_text()).get("code")
        except (OSError, ValueError, AttributeError):
            return None

    def write_clouds_yaml(self) -> Path:
        st = self.state()
        doc = {"clouds": {CLOUD_NAME: {
            "auth_type": "password",
            "auth": {"auth_url": f"http://127.0.0.1:{st['port']}/identity/v3", "username": st["username"],
                     "password": st["password"], "project_name": st["project_name"],
                     "user_domain_name": "Default", "project_domain_name": "Default"},
            "region_name": st["region"], "interface": "public", "identity_api_version": 3}}}
        fd = os.open(self.clouds_yaml, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, sort_keys=False)
        os.chmod(self.clouds_yaml, 0o600)
        return self.clouds_yaml

    def stop(self, purge: bool = False, timeout: float = 90) -> dict[str, int]:
        """Stop the service; with purge, also remove every container, network, loop device and file."""
        if self.state() is not None:
            if purge:
                self.s3.purge()
                self.cdse.purge()
            else:
                self.s3.stop()
                self.cdse.stop()
        pid = self.pid()
        if pid is not None:
            terminate(pid, _alive, timeout)
        self.pid_file.unlink(missing_ok=True)
        removed: dict[str, int] = {}
        if purge:
            st = self.state()
            if st is not None:
                removed = Backend(st["instance"], self.state_dir).purge()
            for name in OWN_FILES:
                (self.state_dir / name).unlink(missing_ok=True)
            eodata = self.state_dir / "eodata"
            if eodata.is_dir() and not any(eodata.iterdir()):
                eodata.rmdir()
            try:
                self.state_dir.rmdir()
            except OSError:
                pass
        return removed

    # -- admin API ---------------------------------------------------------------------------
    def _admin(self, method: str, path: str, body: dict | None = None):
        st = self.state()
        if not self.running or st is None:
            raise CbmError(f"the sandbox in {self.state_dir} is not running; run: cbm sandbox start")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + "/__sandbox__" + path, data=data, method=method,
                                     headers={"X-Sandbox-Admin": st["admin_secret"],
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as err:
            raise CbmError(f"sandbox admin call {method} {path} failed: HTTP {err.code}") from None
        return json.loads(raw) if raw else None

    def inject(self, kind: str | None = None, mode: str = "error", count: int = 1, method: str | None = None,
               path: str | None = None, seconds: float = 120) -> dict:
        """Make the next `count` calls matching kind (e.g. 'server.create', 'volume.*', 'fip.create') and/or
        method + path regex fail: mode 'error' (HTTP 500), 'timeout' (hang `seconds`, then drop the
        connection) or 'quota' (403 nova / 413 cinder / 409 neutron, as the real services answer)."""
        return self._admin("POST", "/faults", {"kind": kind, "mode": mode, "count": count, "method": method,
                                               "path": path, "seconds": seconds})["fault"]

    def faults(self) -> list[dict]:
        return self._admin("GET", "/faults")["faults"]

    def clear_faults(self) -> None:
        self._admin("DELETE", "/faults")

    def settings(self, page_size: int | None = None, quotas: dict[str, int] | None = None) -> dict:
        body: dict = {}
        if page_size is not None:
            body["page_size"] = page_size
        if quotas:
            body["quotas"] = quotas
        return self._admin("PUT", "/settings", body)

    def status(self) -> dict:
        return self._admin("GET", "/status")

    def connect(self, **options):
        """An openstacksdk Connection to this sandbox (options as in clouds.yaml, e.g. api_timeout=5)."""
        from openstack import config as os_config, connection  # lazy: ~0.3 s; not in the worker image

        config = os_config.OpenStackConfig(config_files=[str(self.clouds_yaml)])
        return connection.Connection(config=config.get_one(cloud=CLOUD_NAME, **options))
