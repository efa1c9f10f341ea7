"""A deployment's cloud lifecycle with its local side: `up` reconciles the cloud resources
(provision/cloud/reconcile.py), then drops the known_hosts entries of new servers and writes the
inventory; `down` deletes what the deployment owns, then forgets its host keys."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from provision.cloud import reconcile
from provision.hosts import inventory
from provision.hosts.files import DeploymentFiles


def _local_key(files: DeploymentFiles) -> SimpleNamespace:
    """The deployment's local SSH key as the cloud layer wants it (read, ensure, where)."""
    return SimpleNamespace(read=files.read_public_key, ensure=files.ensure_ssh_key, where=str(files.public_key))


def up(spec, dry_run: bool = False) -> tuple[reconcile.UpResult, Path | None]:
    """Create or repair the deployment in the cloud, then its inventory. Returns the result and the
    inventory path (None in a dry run)."""
    files = DeploymentFiles(spec.name)
    result = reconcile.up(spec, _local_key(files), dry_run=dry_run)
    if dry_run:
        return result, None
    files.forget_hosts(result.new_addresses)
    path = inventory.write(spec, result.hosts, manager_ip=result.manager_ip, data_device=result.data_device,
                           volume_id=result.volume_id)
    return result, path


def down(spec, keep_volume: bool, yes: bool, confirm) -> reconcile.DownResult:
    """Delete what the deployment owns in the cloud (asking `confirm(question)` unless `yes`); when
    something was deleted, the host keys of its servers are forgotten."""
    files = DeploymentFiles(spec.name)
    result = reconcile.down(spec, _local_key(files), keep_volume=keep_volume, yes=yes, confirm=confirm)
    if result.deleted:
        files.forget_all_hosts()
    return result
