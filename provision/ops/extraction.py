"""Extraction on the deployment's swarm, ending by itself (`cbm extract swarm SPEC --card C [--res R | --all]`).

For each run (card, resolution): build the extractor image here (provision/ops/extractor_image.py), hand
it to the workers (`docker save` archive, roles/extractor_service), run it as a swarm service with one
task per worker (global mode: a worker `cbm up` adds meanwhile gets a task as it joins, a drained one
gives its scene back at once; `--replicas N`: N tasks) (playbooks/extract.yml; on the manager when the
deployment has no workers, `workers: 0`: one box runs PostGIS and the extraction), follow the progress
in the database (scenes done and left, rows written, rate, ETA), and remove the service as soon as no
scene of the run is left to claim or in progress. `--card s2 --all` runs the seed's S2 order: SCL
histograms (-1), then 10 m, then 20 m bands, each run tracked on its own (extraction_runs), no status
is reset.

Workers that die are restarted by the swarm (restart on failure); their scene is taken back when
its lease expires (extract.lease). A progress poll that fails (PostGIS restarting, the network) is
tried again with a backoff for up to PATIENCE seconds, saying what it waits for; the service keeps
running meanwhile. The workers read the products where the spec's `eodata` says (mount or S3). A run whose tasks all ended while scenes are left, or that makes
no progress while the service has no running task, stops with a one-line error.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import yaml
from invoke.exceptions import Failure
from paramiko.ssh_exception import SSHException

from extractor import db, progress
from extractor.errors import CbmError, UserError, one_line
from extractor.extract import cards
from provision.hosts import files, ssh
from provision.ops import configure, deployment, extractor_image, onboard

SERVICE_PREFIX = "cbm-extract"
STUCK_AFTER = 180.0  # seconds without progress and without a live claim before we look at the tasks
PATIENCE = 900.0     # seconds the database may fail to answer the progress polls before we give up
MAX_DELAY = 60.0     # the longest wait between two polls while it does not answer
# what asking the manager over SSH raises when it does not answer (network, sshd restarting, timeouts)
SSH_HICCUPS = (CbmError, OSError, EOFError, SSHException, Failure)


def service_name(card: str, res: int) -> str:
    return f"{SERVICE_PREFIX}-{card}-{'scl' if res == -1 else res}"


def runs_for(settings, card: str, res: int | None, all_runs: bool) -> list[int]:
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


def storage_vars(dep, settings) -> tuple[dict, str]:
    """The extractor_service variables telling the workers where the products are (the spec's
    `eodata`), and that place in words. S3 keys: the spec's eodata.credentials_file, else the
    deployment settings' s3 keys (written to a 0600 file in the deployment's state folder); the
    role hands the file to the workers as a swarm secret. The keys are never passed as values."""
    from extractor.extract import storage  # lazy: it loads rasterio; only `extract swarm` needs it

    e = dep.spec.eodata
    if e.source == "mount":
        return ({"extractor_service_eodata_source": "mount", "extractor_service_eodata": e.root},
                f"the mount {e.root} on the workers")
    keys_file = ""
    if e.credentials_file:
        storage.read_keys_file(e.credentials_file, f"{dep.spec.where}: eodata.credentials_file")
        keys_file = e.credentials_file
    elif settings.s3.credentials_file:
        storage.read_keys_file(settings.s3.credentials_file)
        keys_file = str(settings.s3.credentials_file)
    elif settings.s3.access_key and settings.s3.secret_key:
        dep.files.folder()
        files.write_private(dep.files.s3_credentials, yaml.safe_dump(
            {"access_key": settings.s3.access_key, "secret_key": settings.s3.secret_key}))
        keys_file = str(dep.files.s3_credentials)
    where = f"S3 bucket {e.bucket} at {e.endpoint}" + ("" if keys_file else " (unsigned requests: no keys given)")
    return ({"extractor_service_eodata_source": "s3", "extractor_service_s3_endpoint": e.endpoint,
             "extractor_service_s3_bucket": e.bucket, "extractor_service_s3_credentials_file": keys_file}, where)


def image_archive(dep, base_image: str | None = None, out=print) -> tuple[str, Path]:
    """The extractor image (built unless it exists) and its `docker save` archive in the deployment's
    state folder, which the hosts load (roles/extractor_service, tasks image)."""
    # configure.yml next to the spec may name a local base image (the sandbox: nothing can be pulled).
    base = base_image or configure.user_vars(dep.spec).get("extractor_image_base") or extractor_image.PRODUCTION_BASE
    out(f"== extractor image (base {base})")
    image = extractor_image.build(base=base)
    archive = extractor_image.archive_path(dep.files.images, image)
    if not archive.exists():  # the tag names the content: an archive of it is never stale
        for old in archive.parent.glob(f"{extractor_image.ARCHIVE_PREFIX}*.tar*"):
            old.unlink()
        extractor_image.save(image, archive)
    return image, archive


def progress_of(settings, card: str, res: int) -> dict:
    with db.session(settings) as conn:
        return progress.run_progress(conn, settings, card, res)


def service_tasks(dep, name: str) -> list[dict]:
    """`docker service ps` of the service on the manager (desired and current states, errors)."""
    conn = dep.manager_ssh()
    try:
        result = ssh.docker(conn, f"service ps {name} --no-trunc --format '{{{{json .}}}}'")
    finally:
        conn.close()
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip().startswith("{")]


def _playbook(spec, extravars: dict, out, limit: str | None = None) -> None:
    log = io.StringIO()  # the per-task lines only matter when it fails (the error names host and task)
    try:
        configure.run(spec, "extract.yml", extravars=extravars, out=log, limit=limit)
    except CbmError:
        out(log.getvalue().rstrip())
        raise


def service_failure(dep, name: str) -> str | None:
    """Why the service's tasks fail, if they do: the last task error and log line; None if a task runs."""
    tasks = service_tasks(dep, name)
    if any(t.get("CurrentState", "").startswith(("Running", "Starting", "Preparing", "Assigned", "Pending"))
           for t in tasks if t.get("DesiredState") == "Running"):
        return None
    errors = [t.get("Error") for t in tasks if t.get("Error")]
    conn = dep.manager_ssh()
    try:
        logs = ssh.docker(conn, f"service logs --raw --tail 5 {name}", merge_stderr=True).stdout
    finally:
        conn.close()
    last = [line.strip() for line in logs.splitlines() if line.strip()]
    return "; ".join(x for x in (errors[0] if errors else "", f"last log line: {last[-1]}" if last else "") if x) \
        or "no task runs"


def follow(settings, dep, card: str, res: int, name: str, poll: float, on_progress=None, note=print) -> dict:
    """Wait until the run has nothing left; `on_progress(row)` after every poll; returns the last row.

    Live claims (leases) in the database mean workers are busy. No progress and no live claim for
    STUCK_AFTER seconds: the service's tasks are asked why (e.g. they cannot reach the database).
    A poll that fails (PostGIS restarting, e.g. during `cbm upgrade`; the network, the SSH tunnel) is
    tried again with a backoff, saying so through `note`, for up to PATIENCE seconds: the workers keep
    going. A manager that does not answer over SSH when asked about the tasks is asked again later
    (for up to PATIENCE seconds of failures)."""
    last_done, last_busy = -1, time.monotonic()
    failing_since, delay = None, poll
    ssh_failing_since = None
    while True:
        try:
            row = progress_of(settings, card, res)
        except UserError:
            raise
        except CbmError as exc:
            now = time.monotonic()
            failing_since = failing_since or now
            if now - failing_since > PATIENCE:
                raise CbmError(f"{exc} (for {now - failing_since:.0f} s)") from None
            note(f"   waiting for the database ({exc}); next look in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            continue
        if failing_since is not None:
            note(f"   the database answers again after {time.monotonic() - failing_since:.0f} s")
            failing_since, delay = None, poll
            last_busy = time.monotonic()
        if on_progress:
            on_progress(row)
        if row["left"] == 0:
            return row
        done = row["done"] + row["failed"]
        if done != last_done or row["running"]:
            last_done, last_busy = done, time.monotonic()
        elif time.monotonic() - last_busy > STUCK_AFTER:
            try:
                why = service_failure(dep, name)
                ssh_failing_since = None
            except SSH_HICCUPS as exc:  # the manager did not answer over SSH: look again later
                ssh_failing_since = ssh_failing_since or time.monotonic()
                if time.monotonic() - ssh_failing_since > PATIENCE:
                    raise CbmError(f"service {name}: no progress, and the manager does not answer over SSH "
                                   f"({one_line(exc, 200)}) for {PATIENCE:.0f} s") from None
                note(f"   cannot ask the manager about {name} ({one_line(exc, 200)}); looking again later")
                why = None
            if why:
                raise CbmError(f"service {name}: {row['left']} scene(s) left but its workers fail: {why}")
            last_busy = time.monotonic()
        time.sleep(poll)


def swarm(spec_path: str, card: str, res: int | None = None, all_runs: bool = False, replicas: int | None = None,
          aoi: str | None = None, parcels: str | None = None, start: str | None = None, end: str | None = None,
          base_image: str | None = None, lease: int | None = None, poll: float = 3.0, config: str | None = None,
          out=print, follower=None) -> list[dict]:
    """Run the card's runs one after the other; the last progress row of each. `follower(card, res)` is a
    context manager factory yielding an `on_progress(row)` callback (the command's progress bar)."""
    dep = deployment.load(spec_path)
    settings = deployment.deployment_settings(spec_path, config)
    worker_password = deployment.require_worker_password(dep)
    resolutions = runs_for(settings, card, res, all_runs)
    record = onboard.read_record(dep)
    aoi = aoi or record.get("aoi") or settings.extract.aoi
    parcels = parcels or record.get("parcels") or settings.extract.parcels
    start = start or record.get("start") or settings.extract.start
    end = end or (onboard.extraction_end(record["end"]) if record.get("end") else settings.extract.end)
    if not aoi or not parcels:
        raise UserError(f"no AOI/parcel table known for deployment {dep.name}; run cbm onboard {spec_path} first "
                        "or pass --aoi and --parcels")
    mode = "replicated" if replicas else "global"   # global: one task per worker, as many as there are
    replicas = replicas or max(1, dep.spec.workers)
    products, where = storage_vars(dep, settings)
    image, archive = image_archive(dep, base_image, out)
    env = {"CBM_EXTRACT_AOI": aoi, "CBM_EXTRACT_PARCELS": parcels}
    if start:
        env["CBM_EXTRACT_START"] = str(start)
    if end:
        env["CBM_EXTRACT_END"] = str(end)
    if lease:
        env["CBM_EXTRACT_LEASE"] = str(lease)
    results = []
    for i, r in enumerate(resolutions):
        name = service_name(card, r)
        out(f"== {name}: {replicas} worker(s) on the swarm, products from {where}")
        # the workers log in as the least-privilege role (extractor/grants.py), never as the owner
        common = {"extractor_service_name": name, "extractor_service_image": image,
                  "extractor_service_db_user": deployment.WORKER_USER,
                  "extractor_service_password_file": str(worker_password)}
        _playbook(dep.spec, {**common, "extractor_service_state": "present",
                              "extractor_service_image_archive": str(archive),
                              "extractor_service_mode": mode, "extractor_service_replicas": replicas,
                              "extractor_service_db_port": dep.db_port,
                              "extractor_service_args": ["run", "--card", card, "--res", str(r)],
                              "extractor_service_env": env, **products}, out,
                  # the image is loaded on the hosts once (a worker `cbm up` adds meanwhile gets it from
                  # site.yml); the later runs need only the manager, so that a worker taken out of the
                  # swarm meanwhile (`cbm up` with fewer workers) is not waited for
                  limit=None if i == 0 else "manager")
        t0 = time.monotonic()
        try:
            with (follower or _no_follower)(card, r) as on_progress:
                row = follow(settings, dep, card, r, name, poll, on_progress, note=out)
        finally:
            _playbook(dep.spec, {**common, "extractor_service_state": "absent"}, out, limit="manager")
        out(f"   {name}: {row['done']} scene(s) done, {row['failed']} failed, {row['rows']:,} rows "
            f"in {time.monotonic() - t0:.0f} s; service removed")
        results.append(row)
    return results


@contextlib.contextmanager
def _no_follower(card: str, res: int):
    yield None

