"""Progress on the terminal (stderr) for long cloud operations.

On a terminal: a rich spinner with the current state and elapsed time. Elsewhere (CI, pipes): one line
per state change, so logs show what happened without animation noise.
"""

from __future__ import annotations

import time

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


class Waiter:
    def __init__(self, what: str):
        self.what = what
        self.state = None
        self.start = time.monotonic()
        self.status = None

    def __enter__(self):
        if console.is_terminal:
            self.status = console.status(self.what)
            self.status.__enter__()
        return self

    def update(self, state: str) -> None:
        elapsed = time.monotonic() - self.start
        if self.status is not None:
            self.status.update(f"{self.what}: {state} ({elapsed:.0f} s)")
        elif state != self.state:
            console.print(f"  {self.what}: {state} ({elapsed:.0f} s)")
        self.state = state

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)
        return False


def step(text: str) -> None:
    """One line saying what is being done now."""
    console.print(f"[bold]*[/bold] {text}")
