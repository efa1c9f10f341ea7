"""The sandbox cloud's server process: `python -m provision.sandbox.service --state-dir DIR --port N`.
`cbm sandbox start` (provision/sandbox/control.py) runs it in the background; it serves until SIGTERM."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from provision.sandbox import hostimage
from provision.sandbox.cloud import Cloud, register_all
from provision.sandbox.control import code_version
from provision.sandbox.http import make_server

log = logging.getLogger("provision.sandbox")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provision.sandbox.service")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--eodata")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hostimage.ensure_host_image()
    register_all()
    cloud = Cloud(Path(args.state_dir), port=args.port, eodata=args.eodata)
    cloud.reconcile()
    server = make_server(cloud, "127.0.0.1", args.port)

    def stop(*_):
        log.info("stopping")
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("sandbox %s listening on http://127.0.0.1:%d", cloud.data["instance"], args.port)
    (Path(args.state_dir) / "ready").write_text(json.dumps({"port": args.port, "code": code_version()}))
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        (Path(args.state_dir) / "ready").unlink(missing_ok=True)
        cloud.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
