"""`cbm sandbox start|stop|status`: a local OpenStack cloud whose servers are real hosts."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from cbm.cli import add_command, add_group
from extractor.errors import UserError
from sandbox.cloud import Sandbox, code_version


def register(sub) -> None:
    """Add the `cbm sandbox` commands."""
    group = add_group(sub, "sandbox", "a local OpenStack-speaking cloud whose servers are containers")
    start = add_command(group, "start", cmd_start,
                        "start the sandbox cloud in the background and write its clouds.yaml")
    _state_dir_option(start)
    start.add_argument("--port", type=int, metavar="N", help="port on 127.0.0.1 (default: the last one, or free)")
    start.add_argument("--eodata", metavar="DIR",
                       help="host folder of products: mounted read-only at /eodata in servers on the `eodata` "
                            "network, and served by an S3 server reachable from them (as on CDSE)")
    stop = add_command(group, "stop", cmd_stop, "stop the sandbox cloud")
    _state_dir_option(stop)
    stop.add_argument("--purge", action="store_true",
                      help="also remove every server container, network, loop device and file it made")
    status = add_command(group, "status", cmd_status, "list the sandbox's servers, volumes and floating IPs")
    _state_dir_option(status)


def _state_dir_option(parser) -> None:
    parser.add_argument("--state-dir", metavar="DIR",
                        help="where the sandbox keeps its state (default: ${XDG_STATE_HOME:-~/.local/state}"
                             "/cbm/sandbox)")


def _sandbox(args, **kwargs):
    return Sandbox(args.state_dir, **kwargs)


def cmd_start(args) -> int:
    if args.port is not None and not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: not a TCP port; pass 1-65535 or leave it out")
    sb = _sandbox(args, port=args.port, eodata=args.eodata)
    was_running = sb.running and sb.served_code() == code_version()
    sb.start()
    print(f"sandbox cloud {'already running' if was_running else 'started'} at {sb.url} "
          f"(cloud '{sb.cloud_name}', log {sb.log_file})")
    print(f"eodata S3 at {sb.eodata_endpoint()} from the servers ({sb.s3.endpoint()} here), bucket eodata, "
          f"keys in {sb.s3.credentials_file}")
    print(f"CDSE catalog at {sb.cdse.catalog_url}, On-Demand Production at {sb.cdse.odp_url} (token "
          f"{sb.cdse.token_url}), its account in {sb.cdse.credentials_file}")
    print(f"export OS_CLIENT_CONFIG_FILE={sb.clouds_yaml} OS_CLOUD={sb.cloud_name} "
          + " ".join(f"{k}={v}" for k, v in sb.cdse.env.items()))
    return 0


def cmd_stop(args) -> int:
    sb = _sandbox(args)
    if not sb.running and not args.purge:
        print(f"sandbox cloud in {sb.state_dir} is not running")
        return 0
    removed = sb.stop(purge=args.purge)
    if args.purge:
        what = ", ".join(f"{n} {k}" for k, n in removed.items()) or "nothing left in Docker"
        print(f"sandbox cloud stopped and purged ({what}; state in {sb.state_dir} removed)")
    else:
        print("sandbox cloud stopped (state kept; `cbm sandbox start` resumes it)")
    return 0


def cmd_status(args) -> int:
    sb = _sandbox(args)
    if not sb.running:
        state = sb.state()
        print(f"sandbox cloud in {sb.state_dir} is not running"
              + (f" ({len(state['servers'])} servers, {len(state['volumes'])} volumes in its state)" if state else ""))
        return 3
    st = sb.status()
    console = Console()
    console.print(f"sandbox {st['instance']} at {sb.url}; clouds.yaml: {sb.clouds_yaml}")
    table = Table("server", "status", "addresses", "container", title="servers")
    for s in st["servers"]:
        table.add_row(s["name"], s["status"], " ".join(s["addresses"]), s["container"] or "")
    console.print(table)
    table = Table("volume", "status", "size GB", "loop", "attached", title="volumes")
    for v in st["volumes"]:
        table.add_row(v["name"] or v["id"], v["status"], str(v["size"]), v["loop"] or "",
                      " ".join(f"{d}" for d in v["device"]))
    console.print(table)
    table = Table("floating IP", "fixed IP", "port", title="floating IPs")
    for f in st["floating_ips"]:
        table.add_row(f["address"], f["fixed"] or "", f["port_id"] or "")
    console.print(table)
    if st["faults"]:
        console.print(f"{len(st['faults'])} fault rule(s) armed")
    return 0
