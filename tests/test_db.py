from conftest import assert_one_line_error, run_cbm

from sandbox.localdb import SEED_SIGS_HISTS

TABLES = {"aois", "dias_catalogue", "sigs", "hists", "extraction_runs"}


def partitions(dbenv, parent="sigs"):
    return {r[0] for r in dbenv.query("SELECT inhrelid::regclass::text FROM pg_inherits"
                                      " WHERE inhparent = %s::regclass", (parent,))}


def columns(dbenv, table):
    return dict(dbenv.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s"
        " ORDER BY ordinal_position", (table,)))


def test_db_init_creates_seed_tables_and_is_idempotent(dbenv):
    first = run_cbm("db", "init", env=dbenv)
    assert first.returncode == 0, first.stderr
    second = run_cbm("db", "init", env=dbenv)
    assert second.returncode == 0, second.stderr
    tables = {r[0] for r in dbenv.query("SELECT table_name FROM information_schema.tables WHERE table_schema='public'")}
    assert TABLES <= tables
    sigs = columns(dbenv, "sigs")
    assert list(sigs) == ["pid", "obsid", "band", "count", "mean", "std", "min", "max", "p25", "p50", "p75"]
    assert sigs["band"] == "character" and sigs["mean"] == "real"
    cat = columns(dbenv, "dias_catalogue")
    for col in ("id", "obstime", "reference", "sensor", "card", "status", "footprint", "product_path"):
        assert col in cat
    indexes = {r[0] for r in dbenv.query("SELECT indexname FROM pg_indexes WHERE schemaname='public'")}
    assert {"dias_catalogue_footprint_idx", "dias_catalogue_reference_idx", "sigs_pid_obsid", "hists_pid_obsid"} <= indexes
    # sigs and hists: partitioned by obsid, a partition ready for the first catalogue ids and a default one
    assert dbenv.query("SELECT relname, relkind FROM pg_class WHERE relname IN ('sigs', 'hists') ORDER BY 1") == \
        [("hists", "p"), ("sigs", "p")]
    assert partitions(dbenv) == {"sigs_obsid_0", "sigs_obsid_100", "sigs_default"}
    assert partitions(dbenv, "hists") == {"hists_obsid_0", "hists_obsid_100", "hists_default"}


def test_footprint_accepts_multipolygon(dbenv):
    assert run_cbm("db", "init", env=dbenv).returncode == 0
    dbenv.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint) VALUES "
                "(now(), 'x', '1A', 'bs', ST_Multi(ST_GeomFromText('MULTIPOLYGON(((0 0,1 0,1 1,0 0)),((2 2,3 2,3 3,2 2)))', 4326)))")
    assert dbenv.query("SELECT ST_NumGeometries(footprint) FROM dias_catalogue") == [(2,)]


def test_seed_database_polygon_footprint_is_upgraded(dbenv):
    dbenv.query("CREATE TABLE dias_catalogue (id serial primary key, obstime timestamp not null,"
                " reference varchar(120) not null, sensor char(2) not null, card char(2) not null,"
                " status varchar(24) default 'ingested' not null, footprint geometry(Polygon,4326))")
    dbenv.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card, footprint) VALUES "
                "(now(), 'old', '2A', 's2', ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))', 4326))")
    proc = run_cbm("db", "init", env=dbenv)
    assert proc.returncode == 0, proc.stderr
    assert dbenv.query("SELECT reference, GeometryType(footprint) FROM dias_catalogue") == [("old", "MULTIPOLYGON")]


def test_unreachable_database_is_one_line(dbenv):
    env = {**dbenv, "PGPORT": "1"}
    proc = run_cbm("db", "init", env=env)
    assert_one_line_error(proc, "cannot connect", "127.0.0.1:1", code=1)


def test_password_never_in_error(dbenv, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cr3t-Value\n")
    secret.chmod(0o600)
    env = {**dbenv, "CBM_DB_PASSWORD_FILE": str(secret), "PGPASSFILE": "/nonexistent"}
    proc = run_cbm("db", "init", env=env)
    err = assert_one_line_error(proc, "password", code=1)
    assert "s3cr3t" not in err and "s3cr3t" not in proc.stdout


def test_password_file_readable_by_others_is_refused(dbenv, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x\n")
    secret.chmod(0o644)
    proc = run_cbm("db", "init", env={**dbenv, "CBM_DB_PASSWORD_FILE": str(secret)})
    assert_one_line_error(proc, "chmod 600", code=2)


SEED_SIGS = """
CREATE TABLE dias_catalogue (id serial primary key, obstime timestamp not null, reference varchar(120) not null,
  sensor char(2) not null, card char(2) not null, status varchar(24) default 'ingested' not null,
  footprint geometry(Polygon,4326));
""" + SEED_SIGS_HISTS
SIGS_DIGEST = "SELECT count(*), md5(string_agg(s::text, ',' ORDER BY pid, obsid, band)) FROM sigs s"
HISTS_DIGEST = "SELECT count(*), md5(string_agg(h::text, ',' ORDER BY pid, obsid)) FROM hists h"


def seed_database(dbenv):
    """A database made by the seed's SQL (its tables and indexes), with extracted rows."""
    dbenv.query(SEED_SIGS)
    dbenv.query("INSERT INTO dias_catalogue (obstime, reference, sensor, card) SELECT now(), 'r' || g, '2A', 's2'"
                " FROM generate_series(1, 130) g")
    dbenv.query("INSERT INTO sigs SELECT p, o, b, p % 7, o * 1.5, 2, 3, 4, 5, 6, 7 FROM generate_series(1, 40) p,"
                " generate_series(1, 130, 3) o, unnest(ARRAY['B04', 'B08', 'VVb']) b")
    dbenv.query("INSERT INTO hists SELECT p, o, json_build_object('4', p, '9', o) FROM generate_series(1, 40) p,"
                " generate_series(1, 130, 3) o")
    dbenv.query("DO $$ BEGIN CREATE ROLE cbm_test_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    dbenv.query("GRANT SELECT ON sigs TO cbm_test_reader")


def test_seed_layout_database_is_upgraded_in_place(dbenv):
    seed_database(dbenv)
    before = dbenv.query(SIGS_DIGEST), dbenv.query(HISTS_DIGEST)
    dry = run_cbm("db", "init", "--dry-run", env=dbenv)
    assert dry.returncode == 0, dry.stderr
    # the steps, their locks and durations; nothing changed
    assert "build index sigs_legacy_pid_obsid" in dry.stdout and "ACCESS EXCLUSIVE on sigs" in dry.stdout
    assert "SHARE UPDATE EXCLUSIVE on hists: reads and COPY go on" in dry.stdout and "about" in dry.stdout
    assert dbenv.query("SELECT relkind FROM pg_class WHERE relname = 'sigs'") == [("r",)]
    assert dbenv.query("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%legacy%'") == [(0,)]

    proc = run_cbm("db", "init", env=dbenv)
    assert proc.returncode == 0, proc.stderr
    assert "upgrade 8/8" in proc.stdout
    assert (dbenv.query(SIGS_DIGEST), dbenv.query(HISTS_DIGEST)) == before
    assert dbenv.query("SELECT relkind FROM pg_class WHERE relname = 'sigs'") == [("p",)]
    assert partitions(dbenv) == {"sigs_legacy", "sigs_default"}   # the legacy one covers obsid < 300
    assert "hists_legacy" in partitions(dbenv, "hists")
    indexes = {r[0] for r in dbenv.query("SELECT indexname FROM pg_indexes WHERE tablename = 'sigs_legacy'")}
    assert indexes == {"sigs_legacy_pid_obsid"}   # the seed's (pid), (obsid), (band) are gone
    assert dbenv.query("SELECT has_table_privilege('cbm_test_reader', 'sigs', 'SELECT')") == [(True,)]
    # one parcel's rows come from the (pid, obsid) index
    plan = "\n".join(r[0] for r in dbenv.query("EXPLAIN SELECT * FROM sigs WHERE pid = 7"))
    assert "sigs_legacy_pid_obsid" in plan, plan

    again = run_cbm("db", "init", "--dry-run", env=dbenv)
    assert "nothing to upgrade" in again.stdout
    assert run_cbm("db", "init", env=dbenv).returncode == 0
    assert (dbenv.query(SIGS_DIGEST), dbenv.query(HISTS_DIGEST)) == before


def test_upgrade_refuses_rows_without_obsid(dbenv):
    seed_database(dbenv)
    dbenv.query("INSERT INTO sigs (pid, obsid, band) VALUES (1, NULL, 'B04')")
    proc = run_cbm("db", "init", env=dbenv)
    assert_one_line_error(proc, "no obsid", "obsid IS NULL", code=2)
    assert dbenv.query("SELECT count(*) FROM sigs WHERE obsid IS NULL") == [(1,)]
    dbenv.query("DELETE FROM sigs WHERE obsid IS NULL")
    proc = run_cbm("db", "init", env=dbenv)   # resumes: the index built before is kept
    assert proc.returncode == 0, proc.stderr
    assert "build index sigs_legacy" not in proc.stdout and "upgrade 1/6: validate that CHECK on sigs" in proc.stdout
    assert dbenv.query("SELECT relkind FROM pg_class WHERE relname = 'sigs'") == [("p",)]


def test_partitions_follow_the_catalogue(dbenv):
    import datetime as dt

    from extractor import catalog
    from extractor import settings as settings_mod

    assert run_cbm("db", "init", env=dbenv).returncode == 0
    assert partitions(dbenv) == {"sigs_obsid_0", "sigs_obsid_100", "sigs_default"}
    # rows of an obsid beyond the partitions (a catalogue row added by another tool) go to the default one
    dbenv.query("INSERT INTO sigs (pid, obsid, band) VALUES (1, 250, 'B04'), (2, 450, 'B08')")
    settings = settings_mod.load(environ={})
    square = '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}'
    products = [catalog.Product(f"S1A_IW_GRDH_{i:04d}", dt.datetime(2024, 5, 1) + dt.timedelta(hours=i),
                                "1A", None, square, None) for i in range(260)]
    conn = dbenv.conn()
    conn.autocommit = False
    catalog.store(conn, settings, "bs", products, catalog.SyncStats())
    conn.commit()
    assert dbenv.query("SELECT max(id) FROM dias_catalogue") == [(260,)]
    names = partitions(dbenv)
    assert {"sigs_obsid_200", "sigs_obsid_300"} <= names and "sigs_obsid_400" not in names
    assert {"hists_obsid_200", "hists_obsid_300"} <= partitions(dbenv, "hists")
    # the default partition's row of obsid 250 moved into its partition; 450 waits in the default
    assert dbenv.query("SELECT tableoid::regclass::text, obsid FROM sigs ORDER BY obsid") == \
        [("sigs_obsid_200", 250), ("sigs_default", 450)]


def test_new_partitions_are_sized_by_the_rows_each_extracted_scene_wrote(dbenv, monkeypatch):
    import datetime as dt

    from extractor import catalog
    from extractor import partitions as partitioning
    from extractor import settings as settings_mod

    assert run_cbm("db", "init", env=dbenv).returncode == 0
    settings = settings_mod.load(environ={})
    square = '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}'

    def sync(first, count):
        products = [catalog.Product(f"S1A_IW_GRDH_{i:04d}", dt.datetime(2024, 5, 1) + dt.timedelta(hours=i),
                                    "1A", None, square, None) for i in range(first, first + count)]
        conn = dbenv.conn()
        conn.autocommit = False
        catalog.store(conn, settings, "bs", products, catalog.SyncStats())
        conn.commit()
        conn.close()

    sync(0, 40)   # 40 scenes extracted, 30 parcels x 2 bands each, into sigs_obsid_0
    dbenv.query("UPDATE dias_catalogue SET status = 'extracted';"
                " INSERT INTO sigs (pid, obsid, band) SELECT p, o, b FROM generate_series(1, 30) p,"
                " (SELECT id FROM dias_catalogue) c(o), (VALUES ('VVb'), ('VHb')) v(b); ANALYZE sigs")
    rows_per_scene = dbenv.query("SELECT count(*) / count(DISTINCT obsid) FROM sigs")[0][0]
    monkeypatch.setattr(partitioning, "PARTITION_ROWS", 1500)
    width = 1500 // rows_per_scene
    sync(40, 260)   # catalogue ids up to 300: new partitions after sigs_obsid_100, `width` ids each
    bounds = sorted(dbenv.query("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
                                " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'sigs'::regclass"
                                " AND c.relname NOT IN ('sigs_obsid_0', 'sigs_obsid_100', 'sigs_default')"),
                    key=lambda r: int(r[0].rsplit("_", 1)[1]))
    los = [int(name.rsplit("_", 1)[1]) for name, _ in bounds]
    assert los == list(range(200, 300 + width + 1, width)), bounds
    assert all(f"FROM ({lo}) TO ({lo + width})" in bound for lo, (_, bound) in zip(los, bounds)), bounds
    assert partitions(dbenv, "hists") == {n.replace("sigs", "hists") for n in partitions(dbenv)}


def test_upgrade_stops_before_anything_when_a_view_reads_the_old_table(dbenv):
    seed_database(dbenv)
    dbenv.query("CREATE VIEW my_ndvi AS SELECT pid, obsid, mean FROM sigs WHERE band = 'B08'")
    before = (dbenv.query(SIGS_DIGEST), dbenv.query(HISTS_DIGEST))
    for args in (("--dry-run",), ()):
        proc = run_cbm("db", "init", *args, env=dbenv)
        assert_one_line_error(proc, "cannot upgrade table sigs", "my_ndvi", "drop them", code=2)
    assert dbenv.query("SELECT relkind FROM pg_class WHERE relname = 'sigs'") == [("r",)]
    assert dbenv.query("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%legacy%'") == [(0,)]
    assert (dbenv.query(SIGS_DIGEST), dbenv.query(HISTS_DIGEST)) == before
    dbenv.query("DROP VIEW my_ndvi")
    assert run_cbm("db", "init", env=dbenv).returncode == 0
    assert dbenv.query("SELECT relkind FROM pg_class WHERE relname = 'sigs'") == [("p",)]
