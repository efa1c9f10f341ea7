"""SIGTERM, what the swarm sends a task when its node is drained (`cbm up` with fewer workers) or its
service removed, reaches a worker in the middle of a scene: the scene goes back to the queue at once
(not when its lease runs out), its attempt not counted, nothing of it written, and the worker exits 0.
The next worker extracts it as if it had never been claimed.

The worker is held in the middle of scene A by a read that does not return: A's first band file is a
named pipe, which the worker opens and then reads while nothing is ever written into it."""

from __future__ import annotations

import datetime as dt
import errno
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import run_cbm, wait_for
from extract_helpers import Scene, add_scene, extract_env, init_db, make_world, scene_id

DATE = dt.datetime(2024, 6, 1, 10, 30, 31)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("eodata"), s2_dates=(DATE,), with_s1=False, with_empty=False)


def writer_of(fifo) -> int | None:
    """A write end of the pipe once a reader has it open (the worker is in the read), else None."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:   # no reader yet
            return None
        raise


def sigs_of(dbenv, obsid):
    return sorted(dbenv.query("SELECT pid, band, count, mean, std, min, max, p25, p50, p75 FROM sigs"
                              " WHERE obsid = %s", (obsid,)))


def test_sigterm_in_the_middle_of_a_scene_gives_it_back_at_once(dbenv, world):
    init_db(dbenv, world)
    a = world.scenes[0]
    twin = a.reference.replace(DATE.strftime("%Y%m%dT%H%M%S"), (DATE + dt.timedelta(days=1)).strftime("%Y%m%dT%H%M%S"))
    add_scene(dbenv, Scene("s2", a.reference, DATE + dt.timedelta(days=1), a.path, a.bounds_utm, a.epsg, a.tile),
              reference=twin)   # B: the same files, a day later: the undisturbed twin of A
    a_id, b_id = scene_id(dbenv, a.reference), scene_id(dbenv, twin)
    band = next((world.root / a.path[len("/eodata/"):]).rglob("*_B02_10m.jp2"))
    saved = band.with_name(band.name + ".saved")
    band.rename(saved)
    os.mkfifo(band)
    env = {**os.environ, **extract_env(dbenv, world, poll=0.2)}   # lease: the default 300 s
    # the image's entry point, as a swarm task runs it
    worker = subprocess.Popen([sys.executable, "-m", "extractor.extract", "run", "--card", "s2", "--res", "10"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout), daemon=True)
    reader.start()
    fd = None
    try:
        fd = wait_for(lambda: writer_of(band), what="the worker to read A's band file", timeout=120)
        assert dbenv.query("SELECT obsid, status, attempts FROM extraction_runs") == [(a_id, "inprogress", 1)]
        os.kill(worker.pid, signal.SIGTERM)
        t0 = time.monotonic()
        wait_for(lambda: dbenv.query("SELECT status FROM extraction_runs WHERE obsid = %s", (a_id,)) == [("ingested",)],
                 what="scene A back in the queue", timeout=10, interval=0.05)
        back_after = time.monotonic() - t0
        assert worker.wait(timeout=30) == 0, worker.stderr.read()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if fd is not None:
            os.close(fd)
        band.unlink()
        saved.rename(band)
    assert back_after < 5, back_after   # the read still hung: it was not waited for, nor was the lease
    reader.join(timeout=10)
    out = "".join(lines)
    assert (f"scene {a_id} {a.reference} run 10: given back at once, the worker was asked to stop (SIGTERM); "
            "nothing written, its attempt not counted") in out, out
    assert "the worker was asked to stop (SIGTERM): stopped after 0 scene(s)" in out, out
    assert dbenv.query("SELECT obsid, status, attempts, lease_until, detail FROM extraction_runs") == [
        (a_id, "ingested", 0, None, "given back: the worker was asked to stop (SIGTERM)")]
    assert dbenv.query("SELECT id, status FROM dias_catalogue ORDER BY id") == [(a_id, "ingested"), (b_id, "ingested")]
    assert dbenv.query("SELECT count(*) FROM sigs") == [(0,)]

    again = run_cbm("extract", "run", "--card", "s2", "--res", "10", env=env)
    assert again.returncode == 0, again.stderr
    assert dbenv.query("SELECT obsid, status, attempts FROM extraction_runs ORDER BY obsid") == [
        (a_id, "extracted", 1), (b_id, "extracted", 1)]
    assert sigs_of(dbenv, a_id) == sigs_of(dbenv, b_id) and sigs_of(dbenv, a_id)


def test_sigterm_while_waiting_for_other_workers_ends_the_worker(dbenv, world):
    """Nothing to claim while another worker holds a live lease: the worker waits (extract.poll, 60 s
    here), and SIGTERM ends the wait at once, exit 0."""
    init_db(dbenv, world)
    a_id = scene_id(dbenv, world.scenes[0].reference)
    dbenv.query("INSERT INTO extraction_runs (obsid, res, status, owner, claimed_at, lease_until, attempts)"
                " VALUES (%s, 10, 'inprogress', 'elsewhere:1', now(), now() + interval '1 hour', 1)", (a_id,))
    env = {**os.environ, **extract_env(dbenv, world, poll=60)}
    worker = subprocess.Popen([sys.executable, "-m", "extractor.extract", "run", "--card", "s2", "--res", "10"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(line.startswith("worker ") for line in lines), what="the worker to start", timeout=120)
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait(timeout=10) == 0, worker.stderr.read()   # not the 60 s of extract.poll
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    reader.join(timeout=10)
    out = "".join(lines)
    assert "the worker was asked to stop (SIGTERM): stopped after 0 scene(s)" in out, out
    assert dbenv.query("SELECT owner, status FROM extraction_runs") == [("elsewhere:1", "inprogress")]


def test_a_stop_is_passed_on_to_the_handler_the_process_had():
    """A program that runs workers in its own process (the schedule's job) and stops on SIGTERM hears
    the signal once the worker has given its scene back; inside the worker it only sets the request."""
    from extractor.extract import guard

    heard = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: heard.append(signum))
    try:
        with guard.StopRequest().on(signal.SIGTERM) as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop.why == "the worker was asked to stop (SIGTERM)" and heard == []
            with pytest.raises(guard.Stopped, match="asked to stop"):
                stop.check()
        assert heard == [signal.SIGTERM]
        with guard.StopRequest().on(signal.SIGTERM) as quiet:   # no signal: nothing passed on
            pass
        assert not quiet and heard == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)
