"""`cbm config show`: the effective settings, secrets masked."""

from __future__ import annotations

import yaml

from cbm import context
from cbm.cli import add_command, add_group


def cmd_show(args) -> int:
    s = context.settings(args)
    print(f"# settings file: {s.source or 'none (defaults + environment)'}")
    print(yaml.safe_dump(s.as_dict(masked=True), sort_keys=False), end="")
    return 0


def register(sub) -> None:
    group = add_group(sub, "config", "show the effective settings")
    add_command(group, "show", cmd_show, "print the effective settings (secrets masked)")
