"""(work in progress)"""


def register(sub) -> None:
    """Add the `cbm sandbox` commands."""
