"""A local stand-in for the Copernicus Data Space S3 endpoint: a folder (the generated eodata tree)
served as bucket `eodata`, path-style, object key = the file's path relative to the folder.

Why moto: it is a real S3 server (SigV4, ranged GETs, HEAD, ListObjectsV2 with delimiter/prefix,
S3-shaped XML errors) that GDAL's /vsis3/ and boto3 talk to as to AWS; no S3 is written here. Only
two things are added around moto's WSGI app: `GET /__sandbox__/ping` (how start() knows the server is
this one and answers, without spending an unchecked request) and a 403 on moto's own `/moto-api/`
(unauthenticated: anyone could turn the auth check off, read the keys or wipe the bucket).

Auth: the server process runs with INITIAL_NO_AUTH_ACTION_COUNT=3 (read by moto at import). The first
three requests, CreateUser, PutUserPolicy (s3:* on the bucket and its objects) and CreateAccessKey,
are not checked; every later request must be signed with that key (else 403 InvalidAccessKeyId or
SignatureDoesNotMatch). start() spends the three itself, then creates the bucket and uploads with the
new key, and writes it to s3-credentials.yml (0600).

Until start() has made the key and uploaded the folder, the server answers every other client 503
(S3's "unavailable"): a worker probing a restarting server sees it down, never half-filled, and
cannot use up the unchecked requests. start()'s own requests carry a token of this run (a header).

Restarts: moto keeps everything in memory. stop() ends the process but keeps s3.json, so start()
runs a new server on the same port, makes a new key (the credentials file is rewritten) and uploads
the folder again. purge() also removes the files.

    s3 = EodataS3(state_dir, eodata=folder).start()   # idempotent
    s3.endpoint("127.0.0.1"), s3.credentials_file      # -> AWS_S3_ENDPOINT, keys for GDAL/boto3
    s3.stop(); s3.purge()
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from extractor.errors import CbmError, UserError, one_line
from sandbox.processes import alive, serve_until_sigterm, terminate

SETUP_REQUESTS = 3          # CreateUser, PutUserPolicy, CreateAccessKey: the only unchecked requests
USER = "eodata-reader"
REGION = "us-east-1"
PING = "/__sandbox__/ping"
PING_REPLY = b"cbm-sandbox-s3\n"
OPEN = "/__sandbox__/open"       # start() opens the server to clients once the bucket is whole
SETUP_HEADER = "X-Sandbox-Setup"  # start()'s own requests carry the token of the server's run
UPLOAD_THREADS = 16
REPO = Path(__file__).resolve().parent.parent




def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server does: TIME_WAIT is fine
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EodataS3:
    """moto S3 server process serving `eodata` (a folder) as bucket `bucket`."""

    def __init__(self, state_dir: Path, eodata: Path, port: int = 0, bucket: str = "eodata", host: str = "0.0.0.0"):
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.eodata = Path(eodata).expanduser().resolve()
        self.bucket, self.host, self._port = bucket, host, port
        self._local = "127.0.0.1" if host in ("0.0.0.0", "") else host   # where this machine reaches it
        self.state_file, self.log_file = self.state_dir / "s3.json", self.state_dir / "s3.log"

    # -- files -------------------------------------------------------------------------------
    @property
    def credentials_file(self) -> Path:
        return self.state_dir / "s3-credentials.yml"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def port(self) -> int:
        port = self._state().get("port")
        if not port:
            raise CbmError(f"the S3 stand-in in {self.state_dir} has never been started (no {self.state_file.name})")
        return int(port)

    def endpoint(self, address: str = "127.0.0.1") -> str:
        return f"http://{address}:{self.port}"

    @property
    def running(self) -> bool:
        pid = self._state().get("pid")
        return bool(pid) and alive(pid, "sandbox.s3") and self._answers()

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint(self._local) + PING, timeout=2) as r:
                return r.read() == PING_REPLY
        except (OSError, CbmError):
            return False

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> "EodataS3":
        """Run the server in the background (idempotent), create the key and the bucket, upload the folder."""
        if self.running:
            if self._state().get("eodata") != str(self.eodata):
                raise UserError(f"the S3 stand-in in {self.state_dir} already serves {self._state().get('eodata')}; "
                                "stop it first to serve another eodata folder")
            return self
        if not self.eodata.is_dir():
            raise UserError(f"eodata folder {self.eodata}: not a directory; generate the products there "
                            "or pass another folder")
        self.stop()   # a recorded server that is alive but does not answer
        self.state_dir.mkdir(parents=True, exist_ok=True)
        port = self._port or self._state().get("port") or _free_port(self.host)
        if not _bindable(self.host, port):
            raise self._port_in_use(port)
        cmd = [sys.executable, "-m", "sandbox.s3", "--state-dir", str(self.state_dir), "--port", str(port),
               "--host", self.host]
        self._token = secrets.token_hex(16)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "CBM_S3_SETUP_TOKEN": self._token}
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, cwd=self.state_dir, env=env)
        self._write_state(port, proc.pid)
        try:
            self._wait_ready(proc, timeout)
            access_key, secret_key = self._create_key()
            self._write_credentials(access_key, secret_key)
            self._upload(access_key, secret_key)
            self._open()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, CbmError) or not isinstance(exc, Exception):
                raise
            raise CbmError(f"setting up the S3 stand-in failed: {one_line(exc, 300)}; see {self.log_file}") from exc
        return self

    def _port_in_use(self, port: int) -> UserError:
        return UserError(f"S3 stand-in: port {port} on {self.host} is in use; pass another port or stop what "
                         "listens there")

    def _wait_ready(self, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if b"Address already in use" in self.log_file.read_bytes()[-4000:]:
                    raise self._port_in_use(self.port)
                raise CbmError(f"the S3 stand-in exited with code {proc.returncode}; see {self.log_file}")
            if self._answers():
                return
            time.sleep(0.05)
        raise CbmError(f"the S3 stand-in did not answer within {timeout:.0f} s; see {self.log_file}")

    def _open(self) -> None:
        """Let clients in: until now they got 503 (a restarting S3 is down until its bucket is whole)."""
        req = urllib.request.Request(self.endpoint(self._local) + OPEN, data=b"", method="POST",
                                     headers={SETUP_HEADER: self._token})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def _client(self, service: str, access_key: str = "setup", secret_key: str = "setup"):
        import boto3  # lazy: optional dependency (the `sandbox` extra), only the sandbox needs it
        from botocore.config import Config  # lazy: comes with boto3

        config = Config(max_pool_connections=UPLOAD_THREADS, retries={"max_attempts": 1},
                        s3={"addressing_style": "path"}, request_checksum_calculation="when_required")
        client = boto3.client(service, endpoint_url=self.endpoint(self._local), region_name=REGION, config=config,
                              aws_access_key_id=access_key, aws_secret_access_key=secret_key)
        # the server lets only start()'s own requests in until it is opened (an unsigned header)
        client.meta.events.register("before-send", lambda request, **_: request.headers.__setitem__(
            SETUP_HEADER, self._token))
        return client

    def _create_key(self) -> tuple[str, str]:
        """The three unchecked requests: a user, its policy and its access key."""
        iam = self._client("iam")
        iam.create_user(UserName=USER)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": [
            f"arn:aws:s3:::{self.bucket}", f"arn:aws:s3:::{self.bucket}/*"]}]}
        iam.put_user_policy(UserName=USER, PolicyName="eodata", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=USER)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def _upload(self, access_key: str, secret_key: str) -> None:
        s3 = self._client("s3", access_key, secret_key)
        s3.create_bucket(Bucket=self.bucket)

        def put(path: Path) -> None:
            with open(path, "rb") as body:
                s3.put_object(Bucket=self.bucket, Key=path.relative_to(self.eodata).as_posix(), Body=body)

        files = sorted(p for p in self.eodata.rglob("*") if p.is_file())
        with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            list(pool.map(put, files))   # re-raises the first failure

    def _write_state(self, port: int, pid: int) -> None:
        state = {"port": port, "pid": pid, "bucket": self.bucket, "eodata": str(self.eodata)}
        self.state_file.write_text(json.dumps(state, indent=1) + "\n")

    def _write_credentials(self, access_key: str, secret_key: str) -> None:
        self.credentials_file.unlink(missing_ok=True)   # so that it is created 0600, never wider
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump({"access_key": access_key, "secret_key": secret_key}, f, sort_keys=False)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the server (SIGKILL after `timeout` s); keeps s3.json so a restart reuses the port."""
        pid = self._state().get("pid")
        if not pid or not alive(pid, "sandbox.s3"):
            return
        terminate(pid, lambda p: alive(p, "sandbox.s3"), timeout)

    def purge(self) -> None:
        """stop() and remove s3.json, s3-credentials.yml and s3.log."""
        self.stop()
        for path in (self.state_file, self.credentials_file, self.log_file):
            path.unlink(missing_ok=True)


# -- the server process ----------------------------------------------------------------------
def _guard(app, token: str):
    """moto's WSGI app, plus the ping, minus moto's unauthenticated admin API; closed to clients
    (503, as S3 answers when it is unavailable) until start() has made the key and uploaded the folder."""
    opened = threading.Event()

    def guarded(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == PING:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [PING_REPLY]
        setup = bool(token) and environ.get("HTTP_" + SETUP_HEADER.upper().replace("-", "_")) == token
        if path == OPEN and setup:
            opened.set()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"open\n"]
        if not opened.is_set() and not setup:
            start_response("503 Service Unavailable", [("Content-Type", "application/xml"), ("Retry-After", "1")])
            return [b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code>"
                    b"<Message>The sandbox S3 server is starting</Message></Error>"]
        if path.startswith("/moto-api"):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"moto's admin API is disabled in the sandbox\n"]
        return app(environ, start_response)
    return guarded


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sandbox.s3", description="the sandbox's S3 server (moto)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="0.0.0.0")
    args = parser.parse_args(argv)
    os.chdir(args.state_dir)
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_REQUESTS)   # moto reads it at import
    from moto.moto_server.werkzeug_app import (  # lazy: after INITIAL_NO_AUTH_ACTION_COUNT is set
        DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
    from werkzeug.serving import make_server  # lazy: comes with moto[server]

    app = DomainDispatcherApplication(create_backend_app)
    guarded = _guard(app, os.environ.pop("CBM_S3_SETUP_TOKEN", ""))
    server = make_server(args.host, args.port, guarded, threaded=True, request_handler=MotoRequestHandler)
    print(f"S3 stand-in (moto) on {args.host}:{args.port}", flush=True)
    serve_until_sigterm(server.serve_forever, server.shutdown)
    server.server_close()
    print("S3 stand-in stopped", flush=True)


if __name__ == "__main__":
    main()
