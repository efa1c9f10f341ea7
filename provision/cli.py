"""Subcommands of the cloud lifecycle: up, plan, down, configure, sandbox, ..."""


def register(sub) -> None:
    """Add the cloud lifecycle commands to `cbm`."""
