"""`cbm extract swarm` follows the run in the database: a PostGIS that restarts meanwhile (e.g. during
`cbm upgrade` of the manager) is waited for, with a note saying so, instead of ending the command
(whose clean-up would remove the service and stop the workers)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

from conftest import run_cbm, wait_for
from extractor import settings as settings_mod
from provision.ops import extraction
from sandbox.localdb import LocalPostgis


def test_follow_waits_for_a_restarting_database(tmp_path, monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="cbm-follow-"))  # the server runs as postgres: not under tmp_path
    base.chmod(0o755)
    pg = LocalPostgis(root=base / "pg").start()
    try:
        pg.psql("CREATE EXTENSION postgis")
        env = {**pg.env(), "XDG_CONFIG_HOME": str(tmp_path / "none")}
        assert run_cbm("db", "init", env=env).returncode == 0
        pg.psql("INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint) VALUES"
                " ('2026-04-05', 'S1A_TEST_CARD_BS', '1A', 'bs',"
                "  ST_Multi(ST_MakeEnvelope(10, 55, 11, 56, 4326)))")
        for key, value in env.items():  # libpq reads the PG* variables of this process
            monkeypatch.setenv(key, value)
        settings = settings_mod.load(environ=env)
        notes, rows, result = [], [], {}

        def run():
            try:
                result["row"] = extraction.follow(settings, None, "bs", 10, "cbm-extract-bs-10", poll=0.1,
                                                  on_progress=rows.append, note=notes.append)
            except Exception as exc:  # noqa: BLE001 - reported by the assertions below
                result["error"] = exc

        follower = threading.Thread(target=run, daemon=True)
        follower.start()
        wait_for(lambda: rows, "a first progress poll")
        assert rows[0]["left"] == 1
        pg.stop()   # the database goes away mid-run (root kept: it starts again with its data)
        wait_for(lambda: any("waiting for the database" in n for n in notes), "the note that the follower waits")
        assert follower.is_alive() and "error" not in result, result
        pg.start()
        pg.psql("INSERT INTO extraction_runs (obsid, res, status, rows, finished_at)"
                " SELECT id, 10, 'extracted', 7, now() FROM dias_catalogue;"
                " UPDATE dias_catalogue SET status = 'extracted'")
        follower.join(timeout=120)
        assert not follower.is_alive() and "error" not in result, result
        assert (result["row"]["left"], result["row"]["done"], result["row"]["rows"]) == (0, 1, 7)
        assert any("answers again" in n for n in notes), notes
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_follow_asks_the_manager_again_when_ssh_fails(dbenv, monkeypatch):
    """No progress and no live claim: the follower asks the manager about the tasks; SSH does not
    answer (a closed port): it says so and keeps following, until the run is over."""
    import socket

    from fabric import Connection

    assert run_cbm("db", "init", env=dbenv).returncode == 0
    dbenv.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint) VALUES"
                " ('2026-04-05', 'S1A_TEST_CARD_BS', '1A', 'bs', ST_Multi(ST_MakeEnvelope(10, 55, 11, 56, 4326)))")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]   # nothing listens there once released
    manager = SimpleNamespace(manager_ssh=lambda timeout=10: Connection("127.0.0.1", port=port, connect_timeout=2))
    monkeypatch.setattr(extraction, "STUCK_AFTER", 0.2)
    settings = settings_mod.load(environ=dict(dbenv))
    notes, result = [], {}

    def run():
        try:
            result["row"] = extraction.follow(settings, manager, "bs", 10, "cbm-extract-bs-10", poll=0.1,
                                              note=notes.append)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            result["error"] = exc

    follower = threading.Thread(target=run, daemon=True)
    follower.start()
    wait_for(lambda: any("cannot ask the manager about cbm-extract-bs-10" in n for n in notes),
             "the note that the manager did not answer")
    assert follower.is_alive() and "error" not in result, result
    dbenv.query("INSERT INTO extraction_runs (obsid, res, status, rows, finished_at)"
                " SELECT id, 10, 'extracted', 3, now() FROM dias_catalogue;"
                " UPDATE dias_catalogue SET status = 'extracted'")
    follower.join(timeout=60)
    assert not follower.is_alive() and "error" not in result, result
    assert result["row"]["left"] == 0
