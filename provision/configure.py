"""(work in progress)"""


def register(sub) -> None:
    """Add the `cbm configure` command."""
