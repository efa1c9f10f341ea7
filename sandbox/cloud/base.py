"""What every service module of the sandbox cloud shares: the one router they register their
routes on (at import), timestamps in the services' formats, and ids stable across restarts."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sandbox.cloud.http import Router

router = Router()


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_us() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


def stable_id(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "cbm-sandbox:" + ":".join(parts)))
