"""The stand-ins' background processes (the cloud service, the S3 server, the CDSE stand-ins):
whether one runs, serving until SIGTERM, ending one."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable


def terminate(pid: int, alive: Callable[[int], bool], timeout: float) -> None:
    """SIGTERM `pid`, wait up to `timeout` seconds while `alive(pid)`, then SIGKILL it."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def alive(pid: int, module: str) -> bool:
    """`pid` runs `python -m <module>` (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z" and module.encode() in cmdline


def serve_until_sigterm(serve_forever: Callable[[], None], shutdown: Callable[[], None]) -> None:
    """Run a server's loop until SIGTERM. shutdown() waits for serve_forever() to return, so it is
    called from another thread than the signal handler's."""
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=shutdown, daemon=True).start())
    serve_forever()
