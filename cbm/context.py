"""The one place that resolves a command's settings: `--config`, `--deployment` (or $CBM_DEPLOYMENT)
and the environment (CBM_*, libpq's PG*)."""

from __future__ import annotations

import os

from extractor import settings as settings_mod
from provision.ops.deployment import deployment_settings


def deployment_of(args) -> str | None:
    """The deployment a command acts on: its SPEC argument, else --deployment SPEC, else
    $CBM_DEPLOYMENT; None = the database of the normal settings."""
    return (getattr(args, "spec", None) or getattr(args, "deployment", None)
            or os.environ.get("CBM_DEPLOYMENT") or None)


def settings(args):
    """The settings of a command: the settings file and CBM_* variables; with a deployment, its
    database (the deployment's PostGIS, its password file)."""
    config = getattr(args, "config", None)
    spec = deployment_of(args)
    if spec:
        return deployment_settings(spec, config)
    return settings_mod.load(config)
