"""What ends a scene before its result is written: a lease that is not ours any more, or the time bound.

One Guard per claimed scene (worker._scenes), from the claim to the commit:
  * lease   a heartbeat thread (its own connection) renews the lease every extract.lease / 3. When a
            renewal finds the run is not ours any more (our lease expired, e.g. the worker was frozen,
            and another worker claimed the scene; or the run was swept to 'Max attempts') the guard
            is `lost`: the next check raises claims.LeaseLost and the scene is dropped unwritten (the
            new owner has it). A renewal that fails on the network is tried again at the next beat.
  * bound   extract.scene_timeout seconds from the claim. check() between the steps of a scene
            (listings, header reads, the grid, each band) raises SceneTimeout once it has passed.
  * reads   every storage call of the scene (GDAL: listings, opens, window reads) runs in the
            guard's reader thread; the scene's thread waits for it until the bound at most, and looks
            at the lease every POLL seconds meanwhile. A call still running at the bound raises
            SceneStuck: GDAL cannot be interrupted, so the worker gives the scene back and exits
            (the swarm starts a fresh worker; the stuck thread ends with the process).
  * stop    SIGTERM (a drained node, `docker service rm`, `docker stop`) sets the worker's StopRequest;
            check() and the wait for a read raise Stopped at once (a read that hangs is not waited
            for): the worker gives the scene back without using an attempt and exits 0. A scene whose
            bands are all read and computed is still written (the write is its last step).
The write (COPY and the status, one transaction) comes after the last check: claims.finish only
commits while the claim is ours, so a worker that lost its lease can never write.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from concurrent.futures import Future, wait

import psycopg2

from extractor import db
from extractor.errors import CbmError
from extractor.extract import claims

log = logging.getLogger(__name__)
POLL = 0.5  # seconds between looks at the lease while a storage call runs


class SceneTimeout(Exception):
    """The scene took longer than extract.scene_timeout: given back (the attempt counts), next scene."""


class SceneStuck(SceneTimeout):
    """A storage call did not return within extract.scene_timeout: given back, the worker exits."""


class Stopped(Exception):
    """The worker was asked to stop: the scene is given back at once (its attempt not counted)."""


class StopRequest:
    """Whether the worker was asked to stop. Set by a signal handler (one attribute written: safe in a
    handler, whatever the main thread was doing), looked at between the steps of a scene (Guard) and
    between scenes (the worker)."""

    def __init__(self) -> None:
        self.why: str | None = None
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.why is not None

    def _handler(self, signum, _frame) -> None:
        self.signum, self.why = signum, f"the worker was asked to stop ({signal.Signals(signum).name})"

    @contextlib.contextmanager
    def on(self, *signums: int):
        """Set this request when one of the signals comes, inside the block (Python lets only its main
        thread set handlers: a worker run in another thread keeps the process's handlers). After the
        block, a signal that came is passed on to the Python handler the process had before, if any
        (e.g. the schedule's job, which runs workers in its process and must stop too)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in signums}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, signal.SIG_DFL if handler is None else handler)
            if self.signum is not None and callable(previous.get(self.signum)):
                previous[self.signum](self.signum, None)

    def check(self) -> None:
        if self.why:
            raise Stopped(self.why)

    def sleep(self, seconds: float) -> None:
        """time.sleep(seconds), ended early by the request (a signal does not end time.sleep)."""
        end = time.monotonic() + seconds
        while not self.why and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, POLL))


class Guard:
    def __init__(self, settings, c: claims.Claim, stop: StopRequest | None = None):
        self.settings, self.claim = settings, c
        self.stop_request = stop if stop is not None else StopRequest()
        self.timeout = float(settings.extract.scene_timeout)
        self.deadline = time.monotonic() + self.timeout
        self.lost: str | None = None   # why the run is not ours any more
        self._stop = threading.Event()
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: list[Future] = []
        self._reader: threading.Thread | None = None
        self._heart = threading.Thread(target=self._beat, name=f"lease-{c.obsid}", daemon=True)

    def __enter__(self) -> "Guard":
        self._heart.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for fut in self._pending:   # reads queued for a scene that is over are not started
            fut.cancel()
        self._tasks.put(None)       # the reader ends after the call it is in
        self._heart.join(timeout=10)

    # -- the scene's thread ----------------------------------------------------------------------
    def check(self) -> None:
        """Between two steps of the scene: LeaseLost, Stopped or SceneTimeout when the scene must stop."""
        self.check_lease()
        self.stop_request.check()
        if time.monotonic() >= self.deadline:
            raise SceneTimeout(self._too_long())

    def _too_long(self) -> str:
        return f"the scene took longer than extract.scene_timeout ({self.timeout:g} s)"

    def submit(self, fn, *args) -> Future:
        """Run fn(*args) in the reader thread (calls run one after the other, in order)."""
        fut: Future = Future()
        self._pending.append(fut)
        if self._reader is None:
            self._reader = threading.Thread(target=self._read, name=f"reader-{self.claim.obsid}", daemon=True)
            self._reader.start()
        self._tasks.put((fut, fn, args))
        return fut

    def result(self, fut: Future):
        """fut's result (or its exception), waited for until the bound at most."""
        while True:
            self.check_lease()
            self.stop_request.check()
            left = self.deadline - time.monotonic()
            if left <= 0:
                if fut.done():   # it returned, but the bound has passed
                    raise SceneTimeout(self._too_long())
                raise SceneStuck(f"a read of the storage did not return within extract.scene_timeout "
                                 f"({self.timeout:g} s)")
            if wait([fut], timeout=min(left, POLL)).done:
                self._pending.remove(fut)
                return fut.result()

    def call(self, fn, *args):
        """check(), then fn(*args) in the reader thread, waited for until the bound at most."""
        self.check()
        return self.result(self.submit(fn, *args))

    def check_lease(self) -> None:
        """LeaseLost when the run is not ours any more."""
        if self.lost:
            raise claims.LeaseLost(self.lost)

    # -- the threads -----------------------------------------------------------------------------
    def _read(self) -> None:
        while (task := self._tasks.get()) is not None:
            fut, fn, args = task
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the scene's thread
                fut.set_exception(exc)

    def _beat(self) -> None:
        lease = float(self.settings.extract.lease)
        conn = None
        try:
            while not self._stop.wait(max(lease / 3.0, 0.2)):
                try:
                    conn = conn or db.connect(self.settings)
                    why = claims.renew(conn, self.settings, self.claim, lease)
                except (CbmError, psycopg2.Error) as exc:  # the network: try again at the next beat
                    log.debug("lease of scene %s not renewed: %s", self.claim.obsid, exc)
                    _close(conn)
                    conn = None
                    continue
                if why and not self._stop.is_set():
                    self.lost = why
                    return
        finally:
            _close(conn)


def _close(conn) -> None:
    if conn is not None:
        try:
            conn.close()
        except psycopg2.Error:
            pass
