"""What the per-resource reconcilers share: the record of changes of one `up`, "one or none" (a
deployment owns at most one of a resource; several is an error, never a guess) and "delete and wait"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from extractor.errors import CbmError
from provision.cloud.connection import api, wait_for
from provision.cloud.progress import step


@dataclass
class Change:
    action: str      # create | update | delete | replace | attach | associate | start
    kind: str
    name: str
    detail: str = ""

    def line(self) -> str:
        sign = {"create": "+", "delete": "-", "replace": "-/+"}.get(self.action, "~")
        detail = f"  ({self.detail})" if self.detail else ""
        return f"  {sign:>3} {self.action:<9} {self.kind:<15} {self.name}{detail}"


@dataclass
class Run:
    """One `up` of a spec: the connection, and the changes recorded (and made, unless a dry run)."""

    conn: object
    spec: object
    dry_run: bool
    changes: list[Change] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    new_addresses: set[str] = field(default_factory=set)   # addresses now on new servers (new host keys)

    @property
    def timeout(self) -> float:
        return self.spec.wait_timeout

    def change(self, action: str, kind: str, name: str, detail: str = "") -> bool:
        """Record a change; True when it must be carried out now (not a dry run)."""
        self.changes.append(Change(action, kind, name, detail))
        if not self.dry_run:
            step(f"{action} {kind} {name}" + (f" ({detail})" if detail else ""))
        return not self.dry_run

    def warn(self, text: str) -> None:
        self.warnings.append(text)


def one_or_none(items: list, ambiguous: Callable[[int, str], str], label: Callable = lambda r: r.id):
    """The only item of `items`, None when empty; several: CbmError(ambiguous(count, labels joined))."""
    if len(items) > 1:
        raise CbmError(ambiguous(len(items), ", ".join(label(item) for item in items)))
    return items[0] if items else None


def delete_and_wait(kind: str, items: list, delete, get, timeout: float, announce: bool = False) -> None:
    """Delete every item (all requests first, so the cloud works on them together), then wait until each
    is gone. An item already gone counts as deleted. `announce`: a progress line before each request."""
    for item in items:
        name = item.name or item.id
        if announce:
            step(f"delete {kind} {name}")
        with api(f"deleting {kind} {name}"):
            delete(item, ignore_missing=True)
    for item in items:
        wait_for(f"deletion of {kind} {item.name or item.id}", lambda i=item: get(i.id), done=lambda _: False,
                 timeout=timeout, gone_ok=True)
