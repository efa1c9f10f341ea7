"""`cbm up` on the sandbox cloud: cold (from nothing) and warm (nothing to change), median of N runs,
1 manager + 2 workers (inventories/sandbox/deployment.yml), with the ratio to a peer: the bare
openstacksdk call sequence that creates the same resources with no lookups, ownership or inventory
(what a hand-written script would do). Needs root and a running Docker Engine.

  python -m bench provision [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from provision.cloud import spec as specs
from provision.hosts.files import DeploymentFiles
from sandbox.cloud import Sandbox

REPO = Path(__file__).resolve().parent.parent


def _cbm(*args, env):
    proc = subprocess.run([sys.executable, "-m", "cbm", *args], env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"cbm {' '.join(args)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc


def _bare_sdk(conn, spec, public_key: str) -> None:
    """The peer: create the same resources with plain SDK calls, waiting as little as possible."""
    c, n, b = conn.compute, conn.network, conn.block_storage
    image = conn.image.find_image(spec.image)
    flavor = c.find_flavor(spec.manager_flavor)
    wflavor = c.find_flavor(spec.worker_flavor)
    private, eodata, ext = (n.find_network(x) for x in (spec.networks.private, spec.networks.eodata,
                                                        spec.networks.floating_pool))
    c.create_keypair(name="peer-key", public_key=public_key)
    sg = n.create_security_group(name="peer-sg")
    for cidr in spec.ingress.ssh:
        n.create_security_group_rule(security_group_id=sg.id, direction="ingress", protocol="tcp",
                                     port_range_min=22, port_range_max=22, remote_ip_prefix=cidr)
    vol = b.create_volume(name="peer-data", size=spec.volume.size)
    nets = [{"uuid": private.id}, {"uuid": eodata.id}]
    servers = [c.create_server(name=f"peer-{i}", image_id=image.id, flavor_id=(flavor if i == 0 else wflavor).id,
                               key_name="peer-key", networks=nets, security_groups=[{"name": sg.id}])
               for i in range(spec.workers + 1)]
    servers = [c.wait_for_server(s, interval=0.3, wait=300) for s in servers]
    b.wait_for_status(vol, "available", interval=0.3, wait=300)
    c.create_volume_attachment(servers[0], vol.id)
    b.wait_for_status(vol, "in-use", interval=0.3, wait=300)
    port = next(n.ports(device_id=servers[0].id, network_id=private.id))
    n.create_ip(floating_network_id=ext.id, port_id=port.id)


def _bare_cleanup(conn) -> None:
    c, n, b = conn.compute, conn.network, conn.block_storage
    for ip in n.ips():
        n.delete_ip(ip)
    peers = [s for s in c.servers() if s.name.startswith("peer-")]
    for s in peers:
        c.delete_server(s)
    for s in peers:
        c.wait_for_delete(s, interval=0.3, wait=300)
    for v in b.volumes():
        if v.name == "peer-data":
            b.wait_for_status(v, "available", interval=0.3, wait=300)
            b.delete_volume(v)
            b.wait_for_delete(v, interval=0.3, wait=300)
    for g in n.security_groups(name="peer-sg"):
        n.delete_security_group(g)
    c.delete_keypair("peer-key", ignore_missing=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench provision")
    parser.add_argument("--runs", type=int, default=3)
    args, _ = parser.parse_known_args(argv)
    if os.geteuid() != 0:
        print("bench provision: skipped (the sandbox cloud needs root)")
        return 0

    with tempfile.TemporaryDirectory(prefix="cbm-bench-prov-") as tmp:
        tmp = Path(tmp)
        sb = Sandbox(tmp / "sandbox").start()
        try:
            data = yaml.safe_load((REPO / "inventories" / "sandbox" / "deployment.yml").read_text())
            data.update(name="benchprov", prefix="cbm-benchprov")
            (tmp / "inv").mkdir()
            spec_path = tmp / "inv" / "deployment.yml"
            spec_path.write_text(yaml.safe_dump(data))
            env = {**os.environ, **sb.env, "XDG_STATE_HOME": str(tmp / "state")}
            cold, warm, peer = [], [], []
            for _ in range(args.runs):
                t = time.perf_counter()
                _cbm("up", str(spec_path), env=env)
                cold.append(time.perf_counter() - t)
                for _ in range(1):
                    t = time.perf_counter()
                    out = _cbm("up", str(spec_path), env=env).stdout
                    warm.append(time.perf_counter() - t)
                    assert "No changes" in out, out
                _cbm("down", "--yes", str(spec_path), env=env)
            os.environ.update(sb.env)
            spec = specs.load(spec_path)
            os.environ["XDG_STATE_HOME"] = str(tmp / "state")
            public_key = DeploymentFiles("benchprov").ensure_ssh_key()
            conn = sb.connect()
            for _ in range(args.runs):
                t = time.perf_counter()
                _bare_sdk(conn, spec, public_key)
                peer.append(time.perf_counter() - t)
                _bare_cleanup(conn)
        finally:
            sb.stop(purge=True)
    mc, mw, mp = (statistics.median(x) for x in (cold, warm, peer))
    print(f"cbm up, cold (1 manager + 2 workers from nothing): median {mc:.2f} s of {args.runs} "
          f"({', '.join(f'{x:.2f}' for x in cold)})")
    print(f"cbm up, warm (no changes):                        median {mw:.2f} s of {args.runs} "
          f"({', '.join(f'{x:.2f}' for x in warm)})")
    print(f"peer: bare openstacksdk calls, same resources:     median {mp:.2f} s of {args.runs} "
          f"({', '.join(f'{x:.2f}' for x in peer)})")
    print(f"ratio cold cbm up / bare SDK: {mc / mp:.2f}; warm / cold: {mw / mc:.2f}")
    return 0
