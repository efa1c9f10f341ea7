"""`cbm extract swarm SPEC --card C [--res R | --all]`: extraction on the deployment's swarm, ending by itself.

For each run (card, resolution): build the extractor image here (provision/extractor_image.py), hand
it to the workers (`docker save` archive, roles/extractor_service), run it as a swarm service of N
replicas on the workers (playbooks/extract.yml), follow the progress in the database (scenes done
and left, rows written, rate, ETA), and remove the service as soon as no scene of the run is left
to claim or in progress. `--card s2 --all` runs the seed's S2 order: SCL histograms (-1), then
10 m, then 20 m bands, each run tracked on its own (extraction_runs), no status is reset.

Workers that die are restarted by the swarm (restart on failure); their scene is taken back when
its lease expires (extract.lease). A run whose tasks all ended while scenes are left, or that makes
no progress while the service has no running task, stops with a one-line error.
"""

from __future__ import annotations

import json
import time

from extractor.errors import CbmError, UserError

SERVICE_PREFIX = "cbm-extract"
STUCK_AFTER = 180.0  # seconds without progress and without a live claim before we look at the tasks


def service_name(card: str, res: int) -> str:
    return f"{SERVICE_PREFIX}-{card}-{'scl' if res == -1 else res}"


def runs_for(settings, card: str, res: int | None, all_runs: bool) -> list[int]:
    from extractor.extract import cards

    if card not in cards.CARDS:
        raise UserError(f"unknown card '{card}'; use one of {', '.join(cards.CARDS)}")
    if all_runs:
        return list(cards.card_runs(settings, card))
    if res is None:
        if card == "s2":
            raise UserError("--card s2 needs --res -1 (SCL histograms), 10 or 20, or --all for the three in order")
        return [cards.RESOLUTIONS[card][0]]
    cards.run_spec(settings, card, res)  # validates the pair
    return [res]


def progress_of(settings, card: str, res: int) -> dict:
    from extractor import db
    from provision.status import extraction_progress

    with db.session(settings) as conn:
        for row in extraction_progress(conn, settings):
            if row["card"] == card and row["res"] == res:
                return row
    return {"scenes": 0, "done": 0, "failed": 0, "running": 0, "left": 0, "rows": 0, "rate": 0.0, "eta_seconds": None}


def service_tasks(dep, name: str) -> list[dict]:
    """`docker service ps` of the service on the manager (desired and current states, errors)."""
    from provision.deployment import manager_ssh

    conn = manager_ssh(dep)
    try:
        cmd = f"docker service ps {name} --no-trunc --format '{{{{json .}}}}'"
        result = conn.run(f"{cmd} 2>/dev/null || sudo -n {cmd}", hide=True, warn=True, in_stream=False, timeout=30)
    finally:
        conn.close()
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip().startswith("{")]


def _playbook(spec, extravars: dict, out) -> None:
    import io

    from provision import configure

    log = io.StringIO()  # the per-task lines only matter when it fails (the error names host and task)
    try:
        configure.run_playbook(spec, "extract.yml", extravars=extravars, out=log)
    except CbmError:
        out(log.getvalue().rstrip())
        raise


def service_failure(dep, name: str) -> str | None:
    """Why the service's tasks fail, if they do: the last task error and log line; None if a task runs."""
    from provision.deployment import manager_ssh

    tasks = service_tasks(dep, name)
    if any(t.get("CurrentState", "").startswith(("Running", "Starting", "Preparing", "Assigned", "Pending"))
           for t in tasks if t.get("DesiredState") == "Running"):
        return None
    errors = [t.get("Error") for t in tasks if t.get("Error")]
    conn = manager_ssh(dep)
    try:
        cmd = f"docker service logs --raw --tail 5 {name}"
        logs = conn.run(f"{cmd} 2>&1 || sudo -n {cmd} 2>&1", hide=True, warn=True, in_stream=False, timeout=30).stdout
    finally:
        conn.close()
    last = [line.strip() for line in logs.splitlines() if line.strip()]
    return "; ".join(x for x in (errors[0] if errors else "", f"last log line: {last[-1]}" if last else "") if x) \
        or "no task runs"


def follow(settings, dep, card: str, res: int, name: str, poll: float) -> dict:
    """Wait until the run has nothing left, showing progress; returns the last progress row.

    Live claims (leases) in the database mean workers are busy. No progress and no live claim for
    STUCK_AFTER seconds: the service's tasks are asked why (e.g. they cannot reach the database)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    last_done, last_busy = -1, time.monotonic()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), transient=False) as bar:
        row = progress_of(settings, card, res)
        task = bar.add_task(f"{card} run {'SCL' if res == -1 else f'{res} m'}", total=row["scenes"] or None, detail="")
        while True:
            row = progress_of(settings, card, res)
            eta = row.get("eta_seconds")
            detail = (f"left {row['left']}  failed {row['failed']}  rows {row['rows']:,}  "
                      f"{row['rate']:.0f} scenes/h" + (f"  ETA {eta / 60:.0f} min" if eta else ""))
            bar.update(task, total=row["scenes"], completed=row["done"] + row["failed"], detail=detail)
            if row["left"] == 0:
                return row
            done = row["done"] + row["failed"]
            if done != last_done or row["running"]:
                last_done, last_busy = done, time.monotonic()
            elif time.monotonic() - last_busy > STUCK_AFTER:
                why = service_failure(dep, name)
                if why:
                    raise CbmError(f"service {name}: {row['left']} scene(s) left but its workers fail: {why}")
                last_busy = time.monotonic()
            time.sleep(poll)


def swarm(spec_path: str, card: str, res: int | None = None, all_runs: bool = False, replicas: int | None = None,
          aoi: str | None = None, parcels: str | None = None, start: str | None = None, end: str | None = None,
          base_image: str | None = None, lease: int | None = None, poll: float = 3.0, config: str | None = None,
          out=print) -> list[dict]:
    from provision import deployment, extractor_image, onboard

    dep = deployment.load(spec_path)
    settings = deployment.deployment_settings(spec_path, config)
    resolutions = runs_for(settings, card, res, all_runs)
    record = onboard.read_record(dep)
    aoi = aoi or record.get("aoi") or settings.extract.aoi
    parcels = parcels or record.get("parcels") or settings.extract.parcels
    start = start or record.get("start") or settings.extract.start
    end = end or (onboard.extraction_end(record["end"]) if record.get("end") else settings.extract.end)
    if not aoi or not parcels:
        raise UserError(f"no AOI/parcel table known for deployment {dep.name}; run cbm onboard {spec_path} first "
                        "or pass --aoi and --parcels")
    replicas = replicas or max(1, dep.spec.workers)
    from provision import configure

    # configure.yml next to the spec may name a local base image (the sandbox: nothing can be pulled).
    base = base_image or configure.extra_vars(dep.spec).get("extractor_image_base") or extractor_image.PRODUCTION_BASE
    out(f"== extractor image (base {base})")
    image = extractor_image.build(base=base)
    archive = dep.state_dir / "images" / f"{image.replace('/', '_').replace(':', '-')}.tar"
    if not archive.exists():  # the tag names the content: an archive of it is never stale
        for old in archive.parent.glob("cbm_extractor-*.tar"):
            old.unlink()
        extractor_image.save(image, archive)
    env = {"CBM_EXTRACT_AOI": aoi, "CBM_EXTRACT_PARCELS": parcels}
    if start:
        env["CBM_EXTRACT_START"] = str(start)
    if end:
        env["CBM_EXTRACT_END"] = str(end)
    if lease:
        env["CBM_EXTRACT_LEASE"] = str(lease)
    results = []
    for r in resolutions:
        name = service_name(card, r)
        out(f"== {name}: {replicas} worker(s) on the swarm")
        common = {"extractor_service_name": name, "extractor_service_image": image,
                  "extractor_service_password_file": str(deployment.password_file(dep.name))}
        _playbook(dep.spec, {**common, "extractor_service_state": "present",
                              "extractor_service_image_archive": str(archive),
                              "extractor_service_replicas": replicas,
                              "extractor_service_db_port": dep.db_port,
                              "extractor_service_args": ["extract", "run", "--card", card, "--res", str(r)],
                              "extractor_service_env": env}, out)
        t0 = time.monotonic()
        try:
            row = follow(settings, dep, card, r, name, poll)
        finally:
            _playbook(dep.spec, {**common, "extractor_service_state": "absent"}, out)
        out(f"   {name}: {row['done']} scene(s) done, {row['failed']} failed, {row['rows']:,} rows "
            f"in {time.monotonic() - t0:.0f} s; service removed")
        results.append(row)
    return results


def cmd_swarm(args) -> int:
    results = swarm(args.spec, args.card, args.res, args.all, args.replicas, args.aoi, args.parcels, args.start,
                    args.end, lease=args.lease, config=args.config)
    return 1 if any(r["failed"] for r in results) else 0


def register(group) -> None:
    """Add `cbm extract swarm` to the extract group."""
    from cbm.cli import add_command

    p = add_command(group, "swarm", cmd_swarm,
                    "run the extraction as a swarm service on a deployment; it is removed when no scene is left")
    p.add_argument("spec", metavar="SPEC", help="the deployment's deployment.yml")
    p.add_argument("--card", required=True, choices=("s2", "bs", "c6"))
    p.add_argument("--res", type=int, choices=(-1, 10, 20), help="s2: -1 = SCL histograms, 10 or 20 m bands")
    p.add_argument("--all", action="store_true", help="every run of the card in order (s2: -1, 10, 20)")
    p.add_argument("--replicas", type=int, help="worker tasks (default: the spec's worker count)")
    p.add_argument("--lease", type=int, help="seconds a claim lives without heartbeat (default: extract.lease)")
    p.add_argument("--aoi", help="default: the onboarded AOI")
    p.add_argument("--parcels", metavar="TABLE", help="default: the onboarded parcel table")
    p.add_argument("--start", metavar="YYYY-MM-DD", help="default: the onboarded start")
    p.add_argument("--end", metavar="YYYY-MM-DD", help="exclusive; default: the day after the onboarded end")
