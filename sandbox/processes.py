"""Ending the stand-ins' background processes (the cloud service, the S3 server)."""

from __future__ import annotations

import os
import signal
import time
from typing import Callable


def terminate(pid: int, alive: Callable[[int], bool], timeout: float) -> None:
    """SIGTERM `pid`, wait up to `timeout` seconds while `alive(pid)`, then SIGKILL it."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
