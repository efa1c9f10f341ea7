"""Subcommands of the data side: config, db, parcels, aoi, catalog (and extract, see extractor/extract)."""

from __future__ import annotations

import sys

import yaml

from cbm.cli import add_command, add_group
from extractor import settings as settings_mod


def load_settings(args):
    """The settings of a data command: the settings file and CBM_* variables; with --deployment SPEC
    (or $CBM_DEPLOYMENT) the database is the deployment's PostGIS (see provision/deployment.py)."""
    import os

    config = getattr(args, "config", None)
    spec = getattr(args, "deployment", None) or os.environ.get("CBM_DEPLOYMENT")
    if spec:
        from provision.deployment import deployment_settings

        return deployment_settings(spec, config)
    return settings_mod.load(config)


# -- config -------------------------------------------------------------------------------
def cmd_config_show(args) -> int:
    s = load_settings(args)
    print(f"# settings file: {s.source or 'none (defaults + environment)'}")
    print(yaml.safe_dump(s.as_dict(masked=True), sort_keys=False), end="")
    return 0


# -- db -----------------------------------------------------------------------------------
def cmd_db_init(args) -> int:
    from extractor import db, schema

    s = load_settings(args)
    with db.session(s) as conn:
        schema.init_schema(conn, s)
    print(f"schema ready in {db.describe(s)} (schema {s.db.schema})")
    return 0


def register(sub) -> None:
    config = add_group(sub, "config", "show the effective settings")
    add_command(config, "show", cmd_config_show, "print the effective settings (secrets masked)")

    dbg = add_group(sub, "db", "the CbM database: schema, backups")
    add_command(dbg, "init", cmd_db_init, "create or update the CbM tables (idempotent)")
    from extractor import backup

    backup.register(dbg)

    # Each area registers its own commands, next to its code.
    from extractor import aoi, catalog, parcels
    from extractor.extract import cli as extract_cli

    parcels.register(sub)
    aoi.register(sub)
    catalog.register(sub)
    extract_group = extract_cli.register(sub)
    from provision import extract_service  # `cbm extract swarm SPEC` runs the workers on a deployment

    extract_service.register(extract_group)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `cbm` command")
