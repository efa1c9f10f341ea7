"""The sandbox cloud's server process: `python -m sandbox.cloud.service --state-dir DIR --port N`.
`cbm sandbox start` (sandbox/cloud/control.py) runs it in the background; it serves until SIGTERM.

It assembles the service: importing the service modules registers their routes on `base.router`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from sandbox.cloud import admin, blockstorage, compute, hostimage, identity, image, network  # noqa: F401 (routes)
from sandbox.cloud import firewall
from sandbox.cloud.control import code_version
from sandbox.cloud.http import make_server
from sandbox.cloud.state import Cloud

log = logging.getLogger("sandbox.cloud")


def open_cloud(state_dir: Path, port: int = 0, eodata: str | None = None) -> Cloud:
    """The cloud in state_dir (a new one with its networks if there is none), saved."""
    cloud = Cloud(state_dir, port=port, eodata=eodata)
    if cloud.fresh:
        network.seed_networks(cloud)
    cloud.save()
    return cloud


def reconcile(cloud: Cloud) -> None:
    """After a restart: bring Docker (networks, loop devices, host containers) in line with the state."""
    with cloud.lock:
        for net in cloud.data["subnets"].values():
            cloud.backend.ensure_network(net["network_id"], net["cidr"], net["cbm:docker_gateway"])
        moved = set()  # servers whose volumes came back on other loop devices (after a machine reboot)
        for vol in list(cloud.data["volumes"].values()):
            if vol["status"] == "creating":
                vol["status"] = "error"
                continue
            if vol["status"] == "deleting":
                cloud.background(f"delete volume {vol['id']}", blockstorage._remove, cloud, vol["id"])
                continue
            if cloud.backend.volume_path(vol["id"]).exists():
                dev, major, minor = cloud.backend.ensure_loop(vol["id"])
                if (vol.get("major"), vol.get("minor")) != (major, minor):
                    vol.update(loop=dev, major=major, minor=minor)
                    moved |= {a["server_id"] for a in vol.get("attachments", [])}
            elif vol["status"] != "error":
                vol["status"] = "error"
        for srv in list(cloud.data["servers"].values()):
            if srv["id"] in moved:
                compute.sync_devices(cloud, srv)
            compute.reconcile_server(cloud, srv)
        firewall.sync(cloud)  # the hosts' security groups, from the state
        cloud.save()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.cloud.service")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--eodata")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hostimage.ensure_host_image()
    cloud = open_cloud(Path(args.state_dir), port=args.port, eodata=args.eodata)
    reconcile(cloud)
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
