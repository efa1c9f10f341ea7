"""`cbm schedule SPEC`: the continuous mode on a deployment (the job and its tables: extractor/schedule).

    install   --cards --every [--lookback]: the schedule written in the database (the cards in the seed's
              order; the AOI, parcel table and start of the onboarding; synced up to the onboarding's
              end), the extractor image built here and loaded on the manager, the job run there as the
              swarm service `cbm-schedule` (playbooks/schedule.yml, roles/schedule)
    off       the job removed, the schedule deleted (the runs' records and their logs stay)
    run_now   a run asked for at once (the job is woken by NOTIFY) and followed until it ends

Why a swarm service and not a systemd timer: one path for CDSE and the sandbox, whose hosts are
containers without systemd; the swarm keeps the job running (restart any), and its timer is the
schedule's next_at in the database, where `cbm status` reads the next and last runs.

The job logs in as the owner of the tables: the catalog sync makes the sigs/hists partitions of new
products (ATTACH PARTITION, owner only); it runs on the manager only, which holds the database's files
and the owner's password anyway (README, Continuous mode). Its image lives on the manager's data
volume: a spec whose volume.size is too small for it is refused first.
"""

from __future__ import annotations

import datetime as dt
import io
import time

from extractor import db
from extractor import schedule as jobs
from extractor.errors import CbmError, UserError
from provision.cloud import spec as specs
from provision.ops import configure, deployment, extraction, onboard

SERVICE = "cbm-schedule"
LOG_DIR = "/data/cbm/schedule"   # on the manager's data volume (roles/schedule: schedule_log_dir)
START_WITHIN = 120.0              # seconds the job has to start a requested run


def _playbook(spec, extravars: dict, check: bool, out) -> None:
    log = io.StringIO()  # the per-task lines only matter when it fails (the error names host and task)
    try:
        configure.run(spec, "schedule.yml", extravars={"schedule_service_name": SERVICE, "schedule_log_dir": LOG_DIR,
                                                       **extravars}, check=check, out=log)
    except CbmError:
        out(log.getvalue().rstrip())
        raise
    if check:
        out(log.getvalue().rstrip())


def install(spec_path: str, cards: str, every: str, lookback: str = "10d", check: bool = False,
            config: str | None = None, out=print) -> jobs.Schedule:
    """Set the schedule and run the job on the manager; the schedule."""
    wanted = jobs.ordered_cards(cards)
    period = jobs.parse_duration(every, "--every")
    late = jobs.parse_duration(lookback, "--lookback", minimum=0)
    spec = specs.load(spec_path)
    spec.require_image_room("the continuous mode's job")
    dep = deployment.of_spec(spec)
    settings = deployment.deployment_settings(spec_path, config)
    record = onboard.read_record(dep)
    if not record.get("aoi") or not record.get("parcels"):
        raise UserError(f"deployment {dep.name} was not onboarded from this machine (no AOI nor parcel table known); "
                        f"run cbm onboard {spec_path} first")
    today = dt.datetime.now(dt.timezone.utc).date()
    synced = min(dt.date.fromisoformat(str(record["end"])), today) if record.get("end") else today
    plan = jobs.Schedule(cards=wanted, every=period, lookback=late, aoi=record["aoi"], parcels=record["parcels"],
                         start=dt.date.fromisoformat(str(record["start"])) if record.get("start") else None,
                         synced_to=synced)
    image, archive = extraction.image_archive(dep, None, out)
    products, _where = extraction.storage_vars(dep, settings)
    if not check:
        with db.session(settings) as conn:
            with conn.cursor() as cur:
                jobs.create_tables(cur, settings)   # a deployment configured before the continuous mode existed
            jobs.write(conn, settings, plan)
    out(f"== the job {SERVICE} on the manager{' (check mode: nothing changes)' if check else ''}")
    _playbook(dep.spec, {"schedule_state": "present", "schedule_image": image, "schedule_image_archive": str(archive),
                         "schedule_db_port": dep.db_port, "schedule_db_user": deployment.DB_USER,
                         "schedule_password_file": str(dep.files.password),
                         "schedule_env": {"CBM_CATALOG_URL": settings.catalog.url}, **products}, check, out)
    return plan


def off(spec_path: str, check: bool = False, config: str | None = None, out=print) -> bool:
    """Remove the job and the schedule; whether there was a schedule."""
    dep = deployment.load(spec_path)
    settings = deployment.deployment_settings(spec_path, config)
    _playbook(dep.spec, {"schedule_state": "absent"}, check, out)
    if check:
        with db.session(settings) as conn:
            return jobs.read(conn, settings) is not None
    with db.session(settings) as conn:
        return jobs.remove(conn, settings)


def run_now(spec_path: str, config: str | None = None, poll: float = 2.0, out=print) -> dict:
    """Ask the job for a run now and wait until it ends; its record (schedule_runs)."""
    dep = deployment.load(spec_path)
    settings = deployment.deployment_settings(spec_path, config)
    if not any(t.get("DesiredState") == "Running" for t in extraction.service_tasks(dep, SERVICE)):
        raise UserError(f"the job {SERVICE} does not run on deployment {dep.name}; start it with "
                        f"cbm schedule {spec_path} --cards ... --every ...")
    with db.session(settings) as conn:
        asked = jobs.request_run(conn, settings)
    t0, shown = time.monotonic(), None
    while True:
        with db.session(settings) as conn:
            started = jobs.runs(conn, settings, since=asked)
            busy = None if started else next(iter(jobs.runs(conn, settings, limit=1)), None)
        row = started[-1] if started else None
        if busy is not None and busy["outcome"] == "running":   # the request waits for the run in progress
            if shown != -busy["id"]:
                out(f"waiting for run {busy['id']}, in progress since {busy['started_at']:%H:%M:%S %Z}")
                shown = -busy["id"]
            t0 = time.monotonic()
        if row is None and time.monotonic() - t0 > START_WITHIN:
            raise CbmError(f"the job {SERVICE} did not start the run within {START_WITHIN:.0f} s; see "
                           f"`docker service logs {SERVICE}` on the manager")
        if row is not None and shown != row["id"]:
            where = f"; log on the manager: {row['log']}" if row["log"] else ""
            out(f"run {row['id']} started at {row['started_at']:%Y-%m-%d %H:%M:%S %Z}{where}")
            shown = row["id"]
        if row is not None and row["finished_at"] is not None:
            return row
        time.sleep(poll)
