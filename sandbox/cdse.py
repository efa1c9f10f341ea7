"""The CDSE stand-ins the sandbox serves (`cbm sandbox start`): the catalog (sandbox/catalog_replay.py)
and the On-Demand Production API with its token endpoint (sandbox/odp.py), in one background process.

    cdse = CdseStandIns(state_dir, eodata).start()       # idempotent
    cdse.catalog_url, cdse.odp_url, cdse.token_url, cdse.credentials_file (0600: the account)
    cdse.steer("finish"), cdse.steer("settings", delay=0), cdse.steer("inject", kind="429", count=1)
    cdse.stop(); cdse.purge()

The catalog lists <eodata>/catalog.json ({"Sentinel1": [resto features], ...}, as the rehearsal writes
it; re-read when it changes) and the products the ODP stand-in made. A completed order writes its CARD
product into the eodata folder and, when the sandbox's S3 server runs (sandbox/s3.py), uploads it
there too: it appears in /eodata and in S3 as ODP's standard outputs do on CDSE. Orders, batches and
products made are kept in cdse-odp.json over restarts. Orders take `delay` seconds (60 by default,
`steer("settings", delay=...)`) and the account may place 25 products a month, as the free tier.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from extractor.errors import CbmError, UserError
from sandbox.catalog_replay import CatalogReplay
from sandbox.odp import OdpStandIn
from sandbox.odp_http import ADMIN
from sandbox.processes import alive, serve_until_sigterm, terminate
from sandbox.s3 import REGION, EodataS3

REPO = Path(__file__).resolve().parent.parent
CODE = ("cdse.py", "odp.py", "odp_http.py", "odp_products.py", "catalog_replay.py", "synthetic.py")
USERNAME = "agency@example.eu"
DELAY = 60.0


def code_version() -> str:
    h = hashlib.sha256()
    for name in CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]




def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CdseStandIns:
    """The background process serving the catalog and ODP stand-ins for one sandbox state folder."""

    def __init__(self, state_dir: Path, eodata: Path):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.eodata = Path(eodata).expanduser().resolve()
        self.state_file, self.log_file = self.state_dir / "cdse.json", self.state_dir / "cdse.log"
        self.credentials_file = self.state_dir / "cdse-credentials.yml"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def _url(self, key: str, path: str) -> str:
        port = self._state().get(key)
        if not port:
            raise CbmError(f"the CDSE stand-ins in {self.state_dir} have never been started; run: cbm sandbox start")
        return f"http://127.0.0.1:{port}{path}"

    @property
    def catalog_url(self) -> str:
        return self._url("catalog_port", "/resto/api/collections")

    @property
    def odp_url(self) -> str:
        return self._url("odp_port", "/odata/v1")

    @property
    def token_url(self) -> str:
        return self._url("odp_port", "/auth/realms/CDSE/protocol/openid-connect/token")

    @property
    def env(self) -> dict[str, str]:
        """The settings (as CBM_* variables) that point `cbm` at these stand-ins."""
        return {"CBM_CATALOG_URL": self.catalog_url, "CBM_ODP_URL": self.odp_url, "CBM_ODP_TOKEN_URL": self.token_url,
                "CBM_ODP_CREDENTIALS_FILE": str(self.credentials_file)}

    @property
    def running(self) -> bool:
        pid = self._state().get("pid")
        if not pid or not alive(pid, "sandbox.cdse"):
            return False
        try:
            self.steer("state", timeout=2)
        except CbmError:
            return False
        return True

    def steer(self, op: str, timeout: float = 30, **args) -> dict:
        """A steering call of the ODP stand-in: settings, inject, fail_next, advance, expire_tokens, finish, state."""
        st = self._state()
        req = urllib.request.Request(self._url("odp_port", f"{ADMIN}/{op}"), data=json.dumps(args).encode(),
                                     method="POST", headers={"X-Sandbox-Admin": st.get("admin_secret", ""),
                                                             "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except (OSError, ValueError) as exc:
            raise CbmError(f"the CDSE stand-ins in {self.state_dir} did not take '{op}': {exc}") from None

    def start(self, timeout: float = 60) -> "CdseStandIns":
        st = self._state()
        if self.running and st.get("code") == code_version() and st.get("eodata") == str(self.eodata):
            return self
        self.stop()
        if not self.eodata.is_dir():
            raise UserError(f"eodata folder {self.eodata}: not a directory; create it or pass another folder")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.credentials_file.is_file():
            fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump({"username": USERNAME, "password": secrets.token_urlsafe(16)}, f, sort_keys=False)
        state = {"catalog_port": st.get("catalog_port") or _free_port(), "odp_port": st.get("odp_port") or _free_port(),
                 "admin_secret": secrets.token_hex(16), "eodata": str(self.eodata), "code": code_version()}
        self.state_file.write_text(json.dumps(state, indent=1) + "\n")
        os.chmod(self.state_file, 0o600)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "sandbox.cdse", "--state-dir", str(self.state_dir)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.state_dir, env=env)
        self.state_file.write_text(json.dumps({**state, "pid": proc.pid}, indent=1) + "\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise CbmError(f"the CDSE stand-ins exited with code {proc.returncode}; see {self.log_file}")
            if self.running:
                return self
            time.sleep(0.05)
        self.stop()
        raise CbmError(f"the CDSE stand-ins did not answer within {timeout:.0f} s; see {self.log_file}")

    def stop(self, timeout: float = 10) -> None:
        pid = self._state().get("pid")
        if pid and alive(pid, "sandbox.cdse"):
            terminate(pid, lambda p: alive(p, "sandbox.cdse"), timeout)

    def purge(self) -> None:
        self.stop()
        for name in ("cdse.json", "cdse-odp.json", "cdse-odp.tmp", "cdse.log", "cdse-credentials.yml"):
            (self.state_dir / name).unlink(missing_ok=True)


# -- the server process ------------------------------------------------------------------------
class FileCatalog(CatalogReplay):
    """The catalog stand-in over <eodata>/catalog.json (re-read when it changes) plus the products made."""

    def __init__(self, path: Path, **kwargs):
        self.path, self.mtime, self.made = path, None, []
        super().__init__(features={}, **kwargs)
        self.reload()

    def reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime != self.mtime:
            self.mtime = mtime
            features = json.loads(self.path.read_text()) if mtime is not None else {}
            features.setdefault("Sentinel1", []).extend(self.made)
            self.features = features

    def _select(self, collection, q):
        self.reload()
        return super()._select(collection, q)


def uploader(state_dir: Path, eodata: Path):
    """Put a product made under eodata into the sandbox's S3 server, when it runs."""
    def upload(product_path: str) -> None:
        s3 = EodataS3(state_dir, eodata)
        if not s3.running:
            return
        import boto3  # lazy: optional dependency (the `sandbox` extra), only the sandbox needs it
        from botocore.config import Config  # lazy: comes with boto3

        keys = yaml.safe_load(s3.credentials_file.read_text())
        client = boto3.client("s3", endpoint_url=s3.endpoint(), region_name=REGION,
                              aws_access_key_id=keys["access_key"], aws_secret_access_key=keys["secret_key"],
                              config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"))
        folder = eodata / product_path.removeprefix("/eodata/")
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.put_object(Bucket=s3.bucket, Key=f.relative_to(eodata).as_posix(), Body=f.read_bytes())
    return upload


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.cdse", description="the sandbox's CDSE stand-ins")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    state = json.loads((args.state_dir / "cdse.json").read_text())
    account = yaml.safe_load((args.state_dir / "cdse-credentials.yml").read_text())
    eodata = Path(state["eodata"])
    catalog = FileCatalog(eodata / "catalog.json", port=state["catalog_port"])
    odp = OdpStandIn(catalog=catalog, eodata=eodata, port=state["odp_port"], username=account["username"],
                     password=account["password"], delay=DELAY, retry_after="5", admin_secret=state["admin_secret"],
                     state_file=args.state_dir / "cdse-odp.json", on_product=uploader(args.state_dir, eodata))
    catalog.made = odp.produced
    catalog.start()
    print(f"CDSE stand-ins: catalog {catalog.url}, ODP {odp.url}", flush=True)
    serve_until_sigterm(odp.serve_forever, odp.stop)
    catalog.stop()
    print("CDSE stand-ins stopped", flush=True)


if __name__ == "__main__":
    main()
