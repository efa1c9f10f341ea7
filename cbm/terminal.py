"""What the `cbm` commands share on the terminal: the y/N confirmation."""

from __future__ import annotations

import sys

from extractor.errors import UserError


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
