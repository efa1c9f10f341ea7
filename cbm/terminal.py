"""What the `cbm` commands share on the terminal: the y/N confirmation, durations, progress."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from extractor.errors import UserError

_stderr = Console(stderr=True, highlight=False)


def confirm(question: str, refusal: str) -> bool:
    """Ask `question [y/N]` on the terminal; True only for y/yes. End of input is a "no".

    Without a terminal nobody can answer: raise UserError(refusal), which should say to pass --yes."""
    if not sys.stdin.isatty():
        raise UserError(refusal)
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print(file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m" if minutes else f"{seconds}s"


@contextlib.contextmanager
def live(description: str, total: int | None = None):
    """A rich progress line on stderr when it is a terminal; nothing elsewhere (the final line says what
    happened). Yields `update(**fields)`: completed=, total=, info=."""
    if not _stderr.is_terminal:
        yield lambda **kw: None
        return
    columns = [SpinnerColumn(), TextColumn("{task.description}")]
    if total:
        columns += [BarColumn(), TextColumn("{task.completed}/{task.total}")]
    columns += [TextColumn("{task.fields[info]}"), TimeElapsedColumn()]
    with Progress(*columns, console=_stderr, transient=True) as progress:
        task = progress.add_task(description, total=total, info="")
        yield lambda **kw: progress.update(task, **kw)
