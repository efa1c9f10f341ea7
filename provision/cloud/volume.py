"""The deployment's data volume: created, attached to the manager, marked once attached (ownership.py);
never resized. `up` replaces a volume in state error only when it was never attached (it holds no
data); one that was ever attached is replaced only with --replace-volume (`guard`)."""

from __future__ import annotations

import datetime as dt

from extractor.errors import CbmError, UserError
from provision.cloud import ownership
from provision.cloud.common import Run, delete_and_wait, one_or_none
from provision.cloud.connection import api, wait_for
from provision.cloud.progress import step


class _AttachFailed(Exception):
    pass


def guard(run: Run, found, replace_attached: bool) -> None:
    """Before `up` changes anything: a volume in state error that was ever attached may hold the
    database; without `replace_attached` (--replace-volume) stop with one line saying how to go on."""
    if run.dry_run or replace_attached:
        return
    for vol in found.volumes:
        if vol.status == "error" and ownership.was_attached(vol):
            raise UserError(
                f"volume {vol.name or vol.id} ({vol.id}) is in state error and was attached before, so it may hold "
                f"the database: `cbm up` does not delete it; look at it (openstack volume show {vol.id}) and repair "
                f"it in the cloud, or run `cbm up {run.spec.where} --replace-volume` to delete it and start on a "
                "blank volume (its data is lost)")


def reconcile(run: Run, found, replace_attached: bool = False):
    """The volume (created if missing); not waited for here: it gets ready while the servers boot.
    None in a dry run that would create or replace it (or refuses to: see `guard`)."""
    spec, conn = run.spec, run.conn
    vol = one_or_none(found.volumes, lambda n, ids: (
        f"ambiguous: {n} volumes belong to deployment {spec.name} ({ids}); keep the one with the data, "
        "delete or detag the others (metadata cbm-deployment), and run again"))
    detail = f"{spec.volume.size} GB" + (f", type {spec.volume.type}" if spec.volume.type else "")
    if vol is not None and vol.status == "error":
        if not ownership.was_attached(vol):
            why = "in state error, never attached: holds no data"
        elif replace_attached:
            why = "in state error, was attached: its data is lost (--replace-volume)"
        else:
            why = "in state error, was attached: may hold data, replaced only by `cbm up --replace-volume`"
        if vol.attachments and not run.dry_run:   # Cinder deletes no attached volume
            servers = ", ".join(a.get("server_id") or "?" for a in vol.attachments)
            raise CbmError(f"volume {vol.name or vol.id} is in state error and still attached to server(s) {servers}: "
                           f"detach it (openstack server remove volume SERVER {vol.id}) and run `cbm up` again")
        if not run.change("replace", "volume", vol.name or spec.volume_name, why):
            return None
        delete_and_wait("volume", [vol], conn.block_storage.delete_volume, conn.block_storage.get_volume,
                        run.timeout)
        vol = None
    elif vol is None and not run.change("create", "volume", spec.volume_name, detail):
        return None
    if vol is None:
        kwargs = dict(name=spec.volume_name, size=spec.volume.size,
                      metadata={ownership.OWNER_KEY: spec.name, "cbm-role": "data",
                                ownership.ATTACHED_KEY: ownership.NEVER_ATTACHED},
                      description=ownership.marker(spec))
        if spec.volume.type:
            kwargs["volume_type"] = spec.volume.type
        with api(f"creating volume {spec.volume_name}"):
            vol = conn.block_storage.create_volume(**kwargs)
    elif vol.size < spec.volume.size:
        run.warn(f"volume {vol.name} has {vol.size} GB, the spec asks {spec.volume.size} GB: not resized "
                 "(extend it with `openstack volume set --size`, then grow the filesystem)")
    return vol


def mark_attached(run: Run, vol) -> None:
    """Record on the volume that it was attached (once): from now on it may hold data."""
    mark = (vol.metadata or {}).get(ownership.ATTACHED_KEY, ownership.NEVER_ATTACHED)
    if run.dry_run or mark != ownership.NEVER_ATTACHED:
        return
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with api(f"marking volume {vol.name or vol.id} as attached"):
        run.conn.block_storage.set_volume_metadata(vol, **{ownership.ATTACHED_KEY: stamp})


def wait_ready(run: Run, vol):
    """Wait until the volume can be attached (or is attached already)."""
    bs = run.conn.block_storage
    return wait_for(f"volume {vol.name or vol.id}", lambda: bs.get_volume(vol.id),
                    done=lambda v: v.status in ("available", "in-use"),
                    failed=lambda v: _failed_state(v) if v.status.startswith("error") else None,
                    timeout=run.timeout)


def _failed_state(v) -> str:
    if v.status != "error":
        return f"went to state {v.status}"
    if ownership.was_attached(v):
        return "went to state error; it was attached before and may hold data (see `cbm up --help`: --replace-volume)"
    return "went to state error (run `cbm up` again to replace it)"


def attach(run: Run, vol, manager) -> str | None:
    """Attach the volume to the manager; return the device the cloud reports."""
    spec = run.spec
    if vol is None or manager is None:
        run.change("attach", "volume", spec.volume_name, f"to {spec.manager_name}")
        return None
    for att in vol.attachments or []:
        if att.get("server_id") == manager.id:
            mark_attached(run, vol)
            return att.get("device")
    others = [a.get("server_id") for a in vol.attachments or []]
    if others:
        raise CbmError(f"volume {vol.name} is attached to server(s) {', '.join(others)}, not to the manager "
                       f"{manager.name}: detach it (openstack server remove volume) and run again")
    if not run.change("attach", "volume", vol.name, f"to {manager.name}"):
        return None
    for attempt in (1, 2):   # an attachment that fails in the cloud's background is retried once
        with api(f"attaching volume {vol.name} to {manager.name}"):
            att = run.conn.compute.create_volume_attachment(manager, vol.id)
        try:
            vol = _wait_attached(run, vol, manager)
            break
        except _AttachFailed as exc:
            if attempt == 2:
                raise CbmError(str(exc)) from None
            step(f"{exc}; attaching again")
    mark_attached(run, vol)
    for a in vol.attachments or []:
        if a.get("server_id") == manager.id and a.get("device"):
            return a["device"]
    return att.device


def _wait_attached(run: Run, vol, manager):
    seen = []

    def failed(v):
        seen.append(v.status)
        if v.status.startswith("error"):
            return f"went to state {v.status}"
        if v.status == "available" and "attaching" in seen:
            raise _AttachFailed(f"volume {vol.name}: attaching it to {manager.name} failed in the cloud "
                                "(it went back to available); run `cbm up` again to retry")
        return None
    bs = run.conn.block_storage
    return wait_for(f"volume {vol.name} attaching", lambda: bs.get_volume(vol.id),
                    done=lambda v: v.status == "in-use", failed=failed, timeout=run.timeout)


def wait_detached(conn, vol, timeout: float) -> None:
    """After its server's deletion: wait until the volume is free (so a next `up` can attach it)."""
    wait_for(f"volume {vol.name} detaching", lambda: conn.block_storage.get_volume(vol.id),
             done=lambda v: v.status in ("available", "error"), timeout=timeout)


def delete(conn, spec, vol, deleted_server_ids, timeout: float) -> None:
    """Delete the volume once the deleted servers have let go of it; attached elsewhere: CbmError."""
    bs = conn.block_storage
    name = vol.name or vol.id
    step(f"delete volume {name}")
    ours = set(deleted_server_ids)
    foreign = [a.get("server_id") for a in vol.attachments or [] if a.get("server_id") not in ours]
    if foreign:
        raise CbmError(f"volume {name} is attached to server(s) {', '.join(foreign)} that are not part of "
                       f"deployment {spec.name}: detach it there first, or use --keep-volume")
    wait_for(f"volume {name} detaching", lambda: bs.get_volume(vol.id),
             done=lambda v: v.status in ("available", "error") or v.status.startswith("error"),
             timeout=timeout)
    delete_and_wait("volume", [vol], bs.delete_volume, bs.get_volume, timeout)
