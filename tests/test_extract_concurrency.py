"""4 workers on 20 scenes: every scene processed exactly once, no duplicate rows, all workers end."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from extract_helpers import Scene, add_scene, extract_env, init_db, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("eodata"), s2_dates=(dt.datetime(2024, 4, 1, 10, 30, 31),),
                      with_s1=False, with_empty=False)


def test_four_workers_twenty_scenes(dbenv, world):
    init_db(dbenv, world)
    base = world.scenes[0]
    for i in range(1, 20):  # 19 more catalogue entries (own references and dates) on the same files
        when = base.obstime + dt.timedelta(days=i)
        add_scene(dbenv, Scene("s2", base.reference, when, base.path, base.bounds_utm, base.epsg, base.tile),
                  reference=base.reference.replace("20240401T103031", when.strftime("%Y%m%dT%H%M%S")))
    env = {**os.environ, **extract_env(dbenv, world, poll=0.2)}
    workers = [subprocess.Popen([sys.executable, "-m", "cbm", "extract", "run", "--card", "s2", "--res", "10"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(4)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err
        assert "no scene left" in out
    processed = [line.split()[1] for out, _ in outputs for line in out.splitlines() if line.startswith("scene ")]
    assert len(processed) == 20 and len(set(processed)) == 20           # each scene once, by one worker
    assert dbenv.query("SELECT count(*), sum(attempts), count(*) FILTER (WHERE status = 'extracted')"
                       " FROM extraction_runs") == [(20, 20, 20)]
    assert dbenv.query("SELECT count(*) FROM (SELECT pid, obsid, band FROM sigs GROUP BY 1, 2, 3"
                       " HAVING count(*) > 1) d") == [(0,)]
    per_scene = dbenv.query("SELECT count(DISTINCT n) FROM (SELECT obsid, count(*) n FROM sigs GROUP BY obsid) s")
    assert per_scene == [(1,)]                                           # the same rows for every scene
    assert dbenv.query("SELECT count(DISTINCT obsid) FROM sigs") == [(20,)]
    assert dbenv.query("SELECT DISTINCT status FROM dias_catalogue") == [("ingested",)]  # 10 m of -1,10,20 done
