from conftest import assert_one_line_error, run_cbm


def test_config_show_masks_secrets_and_reads_env(dbenv, tmp_path):
    (tmp_path / "cbm.yml").write_text("catalog:\n  url: http://example.invalid/resto\ns3:\n  secret_key: TOPSECRET\n")
    (tmp_path / "cbm.yml").chmod(0o600)
    proc = run_cbm("config", "show", env={**dbenv, "CBM_EODATA_ROOT": "/mnt/eo"})
    assert proc.returncode == 0, proc.stderr
    assert "http://example.invalid/resto" in proc.stdout
    assert "/mnt/eo" in proc.stdout
    assert "TOPSECRET" not in proc.stdout and "****" in proc.stdout
    assert str(tmp_path / "cbm.yml") in proc.stdout


def test_a_settings_file_with_secrets_must_be_private(dbenv, tmp_path):
    cfg = tmp_path / "cbm.yml"
    cfg.write_text("s3:\n  access_key: AKIAEXAMPLE\n  secret_key: TOPSECRET\n")
    cfg.chmod(0o644)
    proc = run_cbm("config", "show", env=dbenv)
    assert_one_line_error(proc, str(cfg), "s3.access_key, s3.secret_key", f"chmod 600 {cfg}", code=2)
    assert "TOPSECRET" not in proc.stderr and "AKIAEXAMPLE" not in proc.stderr
    cfg.write_text("eodata:\n  root: /mnt/eo\n")   # no secret: any mode is fine
    assert run_cbm("config", "show", env=dbenv).returncode == 0


def test_explicit_config_wins_over_env_var_file(dbenv, tmp_path):
    a = tmp_path / "a.yml"
    a.write_text("eodata:\n  root: /from-a\n")
    b = tmp_path / "b.yml"
    b.write_text("eodata:\n  root: /from-b\n")
    proc = run_cbm("config", "show", "--config", str(a), env={**dbenv, "CBM_CONFIG": str(b)})
    assert "/from-a" in proc.stdout and "/from-b" not in proc.stdout
    proc = run_cbm("config", "show", env={**dbenv, "CBM_CONFIG": str(b)})
    assert "/from-b" in proc.stdout


def test_missing_config_file(dbenv):
    proc = run_cbm("config", "show", "--config", "nope.yml", env=dbenv)
    assert_one_line_error(proc, "nope.yml", "does not exist", code=2)


def test_malformed_config_file(dbenv, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("db:\n  host: [unclosed\n")
    proc = run_cbm("db", "init", "--config", str(bad), env=dbenv)
    assert_one_line_error(proc, "bad.yml", "not valid YAML", code=2)


def test_unknown_key_and_wrong_type(dbenv, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("db:\n  hots: x\n")
    assert_one_line_error(run_cbm("config", "show", "--config", str(bad), env=dbenv), "db.hots", code=2)
    bad.write_text("db:\n  port: eleven\n")
    assert_one_line_error(run_cbm("config", "show", "--config", str(bad), env=dbenv), "db.port", code=2)


def test_bad_table_name_in_config(dbenv, tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("tables:\n  sigs: 'sigs; drop table x'\n")
    assert_one_line_error(run_cbm("db", "init", "--config", str(bad), env=dbenv), "tables.sigs", code=2)


def test_unknown_subcommand_is_one_line():
    proc = run_cbm("frobnicate")
    assert_one_line_error(proc, "frobnicate", code=2)
