"""A deployment's cloud lifecycle with its local side: `up` takes the workers the spec no longer has out
of the swarm (drained, so their tasks move to the other hosts), reconciles the cloud resources
(provision/cloud/reconcile.py), then drops the known_hosts entries of new servers and writes the
inventory; `down` backs up the database (unless the volume is kept or --no-backup), deletes what the
deployment owns, then forgets its host keys."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from extractor.errors import CbmError, UserError
from provision.cloud import reconcile
from provision.hosts import inventory
from provision.hosts.files import DeploymentFiles
from provision.ops import backup, configure


def _local_key(files: DeploymentFiles) -> SimpleNamespace:
    """The deployment's local SSH key as the cloud layer wants it (read, ensure, where)."""
    return SimpleNamespace(read=files.read_public_key, ensure=files.ensure_ssh_key, where=str(files.public_key))


def up(spec, dry_run: bool = False, replace_volume: bool = False) -> tuple[reconcile.UpResult, Path | None]:
    """Create or repair the deployment in the cloud, then its inventory. Returns the result and the
    inventory path (None in a dry run). `replace_volume`: see reconcile.up."""
    files = DeploymentFiles(spec.name)
    if not dry_run:
        retire(spec, reconcile.leaving(spec, _local_key(files)))
    result = reconcile.up(spec, _local_key(files), dry_run=dry_run, replace_volume=replace_volume)
    if dry_run:
        return result, None
    files.forget_hosts(result.new_addresses)
    path = inventory.write(spec, result.hosts, manager_ip=result.manager_ip, data_device=result.data_device,
                           volume_id=result.volume_id)
    return result, path


def backup_before_down(spec, files: DeploymentFiles, config: str | None, progress=backup.no_progress) -> Path | None:
    """The database backup `down` takes before deleting the volume: the dump's path, or None when the
    deployment was never configured (no database password on this machine: no database was made).
    A failure stops `down` (nothing deleted yet) with one line saying how to skip the backup."""
    if not files.password.is_file():
        print(f"database backup: nothing to back up (deployment {spec.name} was never configured: no database)")
        return None
    try:
        path, facts = backup.run_backup(str(spec.path), config=config, progress=progress)
    except (CbmError, UserError) as exc:
        raise type(exc)(f"down: nothing was deleted, the database backup failed: {exc}; to delete without a "
                        f"backup run `cbm down {spec.where} --no-backup` (or keep the data with --keep-volume)") \
            from None
    print(backup.summary(path, facts), flush=True)
    return path


def retire(spec, names: list[str], out=None) -> list[str]:
    """Take the workers among `names` (servers `up` is about to delete) out of the swarm first
    (playbooks/retire.yml on the manager: drain, wait until their tasks moved, remove the nodes), so that
    no task dies with its server. Hosts this machine never put in the inventory are left to the cloud.
    Returns the hosts taken out."""
    if not names or not DeploymentFiles(spec.name).password.is_file():
        return []       # never configured from here: no swarm of ours to leave
    try:
        hosts = inventory.read(spec).group("workers")
    except UserError:   # never up from here
        return []
    going = [h.name for h in hosts if h.name in names]
    if going:
        configure.run(spec, "retire.yml", extravars={"swarm_retire_hosts": going}, out=out,
                      verb=f"taking {', '.join(going)} out of the swarm:", limit="manager")
    return going


def down(spec, keep_volume: bool, yes: bool, confirm, take_backup: bool = True, config: str | None = None,
         progress=backup.no_progress) -> reconcile.DownResult:
    """Delete what the deployment owns in the cloud (asking `confirm(question)` unless `yes`); when
    something was deleted, the host keys of its servers are forgotten. Unless the volume is kept or
    `take_backup` is false, the database is dumped first into the state folder (backups/)."""
    files = DeploymentFiles(spec.name)

    def before_delete() -> None:
        if keep_volume:
            return
        if not take_backup:
            print("database backup skipped (--no-backup)")
            return
        backup_before_down(spec, files, config, progress)

    result = reconcile.down(spec, _local_key(files), keep_volume=keep_volume, yes=yes, confirm=confirm,
                            before_delete=before_delete)
    if result.deleted:
        files.forget_all_hosts()
    return result
