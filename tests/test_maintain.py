"""cbm maintain: the clouded-observation delete, vacuum and cluster on the partitioned sigs/hists."""

import re

from conftest import assert_one_line_error, run_cbm

# SCL histograms of parcel observations: (pid, obsid) -> hist. Obsids span two partitions (0-99, 100-199).
HISTS = {
    (1, 5): '{"9": 40}',             # only cloud: clouded
    (2, 5): '{"8": 3, "9": 37}',     # medium + high cloud: clouded with --classes 8,9 only
    (3, 5): '{"4": 40}',             # clear
    (1, 150): '{"9": 12}',           # clouded (second partition)
    (2, 150): '{"9": 10, "4": 1}',   # one clear pixel: kept
    (3, 150): '{"8": 5}',            # medium cloud only: clouded with --classes 8,9
    (4, 150): '{}',                  # no pixel classes at all: never counts as clouded
}
BANDS = ("B04", "B08", "B11")
REFERENCE = ("SELECT s.pid, s.obsid, s.band FROM sigs s JOIN hists h USING (pid, obsid)"
             " WHERE h.hist::text <> '{}' AND NOT EXISTS (SELECT 1 FROM json_object_keys(h.hist) k"
             " WHERE k <> ALL(%s::text[])) ORDER BY 1, 2, 3")
ALL = "SELECT pid, obsid, band FROM sigs ORDER BY 1, 2, 3"


def fill(dbenv):
    assert run_cbm("db", "init", env=dbenv).returncode == 0
    dbenv.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card, status) SELECT now(), 'r' || g,"
                " '2A', 's2', 'extracted' FROM generate_series(1, 160) g")
    for (pid, obsid), hist in HISTS.items():
        dbenv.query("INSERT INTO hists VALUES (%s, %s, %s)", (pid, obsid, hist))
        for band in BANDS:
            dbenv.query("INSERT INTO sigs (pid, obsid, band, mean) VALUES (%s, %s, %s, 1)", (pid, obsid, band))
    # S1 rows (no histogram) of the same parcels are never touched
    dbenv.query("INSERT INTO sigs (pid, obsid, band, mean) SELECT p, 7, 'VVb', 1 FROM generate_series(1, 4) p")


def test_clouded_dry_run_counts_then_delete_removes_exactly_the_reference_rows(dbenv):
    fill(dbenv)
    everything, hists = dbenv.query(ALL), dbenv.query("SELECT * FROM hists ORDER BY 1, 2")
    doomed = dbenv.query(REFERENCE, (["9"],))
    assert len(doomed) == 2 * len(BANDS)   # (1, 5) and (1, 150)

    dry = run_cbm("maintain", "clouded", "--dry-run", env=dbenv)
    assert dry.returncode == 0, dry.stderr
    assert f"{len(doomed)} sigs rows of 2 observations" in dry.stdout and "nothing deleted" in dry.stdout
    assert dbenv.query(ALL) == everything

    proc = run_cbm("maintain", "clouded", env=dbenv)
    assert proc.returncode == 0, proc.stderr
    assert f"deleted {len(doomed)} sigs rows" in proc.stdout
    assert dbenv.query(ALL) == sorted(set(everything) - set(doomed))
    assert dbenv.query("SELECT * FROM hists ORDER BY 1, 2") == hists   # hists untouched

    again = run_cbm("maintain", "clouded", env=dbenv)   # nothing left: a rerun changes nothing
    assert again.returncode == 0 and "nothing to delete" in again.stdout


def test_clouded_with_more_classes(dbenv):
    fill(dbenv)
    everything = dbenv.query(ALL)
    doomed = dbenv.query(REFERENCE, (["8", "9"],))
    assert len(doomed) == 4 * len(BANDS)
    proc = run_cbm("maintain", "clouded", "--classes", "9,8", env=dbenv)
    assert proc.returncode == 0, proc.stderr
    assert dbenv.query(ALL) == sorted(set(everything) - set(doomed))


def test_bad_classes_is_one_line(dbenv):
    for bad in ("cloud", "9,x", "", "-1"):
        proc = run_cbm("maintain", "clouded", f"--classes={bad}", env=dbenv)
        assert_one_line_error(proc, "--classes", "e.g. --classes 9", code=2)


def test_vacuum_and_cluster_run_partition_by_partition(dbenv):
    fill(dbenv)
    # a partition written out of pid order, as scenes append it
    dbenv.query("INSERT INTO sigs (pid, obsid, band, mean) SELECT (g * 7919) % 5000, 20 + g % 30, 'B04', g"
                " FROM generate_series(1, 20000) g")
    everything = dbenv.query(ALL)
    proc = run_cbm("maintain", "vacuum", env=dbenv)
    assert proc.returncode == 0, proc.stderr
    assert dbenv.query("SELECT count(*) FROM pg_stat_user_tables WHERE relname LIKE 'sigs_obsid_%'"
                       " AND last_vacuum IS NOT NULL") == [(2,)]

    dry = run_cbm("maintain", "cluster", "--dry-run", env=dbenv)
    assert dry.returncode == 0, dry.stderr
    assert "rewrite sigs_obsid_0" in " ".join(dry.stdout.split()), dry.stdout
    assert re.search(r"the database server has \d+\.\d GB free; the largest rewrite needs", dry.stdout), dry.stdout
    proc = run_cbm("maintain", "cluster", env=dbenv)
    assert proc.returncode == 0, proc.stderr
    assert "clustered" in proc.stdout
    # the partition now lies in (pid, obsid) order on disk; nothing lost
    physical = [r[0] for r in dbenv.query("SELECT pid FROM ONLY sigs_obsid_0")]
    assert physical == sorted(physical)
    assert dbenv.query(ALL) == everything
    assert dbenv.query("SELECT indisclustered FROM pg_index WHERE indexrelid = 'sigs_obsid_0_pid_obsid_idx'::regclass") \
        == [(True,)]
    again = run_cbm("maintain", "cluster", env=dbenv)
    assert again.returncode == 0 and "every partition is in order" in again.stdout, again.stdout


def test_cluster_skips_partitions_still_being_extracted(dbenv):
    fill(dbenv)
    dbenv.query("INSERT INTO sigs (pid, obsid, band, mean) SELECT (g * 7919) % 5000, 120, 'B04', g"
                " FROM generate_series(1, 5000) g")
    dbenv.query("UPDATE dias_catalogue SET status = 'ingested' WHERE id = 130")
    dry = run_cbm("maintain", "cluster", "--dry-run", env=dbenv)
    line = next(x for x in dry.stdout.splitlines() if "sigs_obsid_100" in x)
    assert "skip" in line and "wait for extraction" in line


def test_maintain_needs_the_new_layout(dbenv):
    dbenv.query("CREATE TABLE sigs (pid integer, obsid integer, band character(3))")
    dbenv.query("CREATE TABLE hists (pid integer, obsid integer, hist json)")
    proc = run_cbm("maintain", "vacuum", env=dbenv)
    assert_one_line_error(proc, "cbm db init", code=2)


def test_cluster_refuses_without_the_servers_disk_figure(dbenv):
    fill(dbenv)
    dbenv.query("DO $$ BEGIN CREATE ROLE cbm_test_owner LOGIN PASSWORD 'x'; EXCEPTION WHEN duplicate_object"
                " THEN NULL; END $$")
    dbenv.query("GRANT ALL ON ALL TABLES IN SCHEMA public TO cbm_test_owner")
    proc = run_cbm("maintain", "cluster", env={**dbenv, "PGUSER": "cbm_test_owner", "PGPASSWORD": "x"})
    assert_one_line_error(proc, "free disk space of the database server", "pg_execute_server_program", code=2)


def test_maintain_on_a_deployment(live_deployment):
    """Through --deployment: the deployment's database over its tunnel; df run by the server in its container."""
    dep = live_deployment
    out = dep.cbm("maintain", "clouded", "--dry-run", "--deployment", str(dep.spec))
    assert "dry run: nothing deleted" in out.stdout
    out = dep.cbm("maintain", "cluster", "--dry-run", "--deployment", str(dep.spec))
    assert re.search(r"the database server has \d+\.\d GB free", out.stdout), out.stdout
    dep.cbm("maintain", "vacuum", "--deployment", str(dep.spec))
