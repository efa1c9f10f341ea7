from conftest import assert_one_line_error, run_cbm

TABLES = {"aois", "dias_catalogue", "sigs", "hists", "extraction_runs"}


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
    assert {"dias_catalogue_footprint_idx", "dias_catalogue_reference_idx", "sigs_bidx", "sigs_obsidx",
            "sigs_pid", "hist_obsidx", "hist_pidx"} <= indexes


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
