"""Subcommands of the cloud lifecycle: up, plan, down, configure, sandbox, ..."""


def register(sub) -> None:
    """Add the cloud lifecycle commands to `cbm`."""
    from provision import configure
    from provision.sandbox import cli as sandbox_cli

    sandbox_cli.register(sub)
    configure.register(sub)
