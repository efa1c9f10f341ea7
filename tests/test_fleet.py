"""`cbm fleet`: a command over several deployments.

The concurrency limit, the outcomes and the logs with a stand-in command (a tiny script), then the
real `cbm fleet status` over a broken spec and a spec path that does not exist (both reported, exit 1),
and over the shared live sandbox deployment plus a broken one (the live one ok, the broken one failed)."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest
import yaml

from conftest import assert_one_line_error, run_cbm
from live import SANDBOX_SPEC
from provision.ops import fleet

FAKE = textwrap.dedent("""
    import os, sys, time
    folder, name = sys.argv[1], sys.argv[2]
    running = os.path.join(folder, "running")
    os.makedirs(running, exist_ok=True)
    mine = os.path.join(running, name)
    open(mine, "w").close()
    seen, deadline = 0, time.monotonic() + 20
    while time.monotonic() < deadline:      # until a second job runs too, or 20 s (then seen is 1)
        seen = max(seen, len(os.listdir(running)))
        if seen >= 2:
            break
        time.sleep(0.01)
    end = time.monotonic() + 0.3            # keep counting a little: a third job would show here
    while time.monotonic() < end:
        seen = max(seen, len(os.listdir(running)))
        time.sleep(0.01)
    with open(os.path.join(folder, name + ".seen"), "w") as f:
        f.write(str(seen))
    print(f"{name}: first line on stdout")
    print(f"{name}: a line on stderr", file=sys.stderr)
    os.remove(mine)
    if name.startswith("bad"):
        print(f"{name}: last line on stdout")
        print(f"cbm: error: {name} went wrong", file=sys.stderr)
        sys.exit(3)
    print(f"{name} finished fine")
""")


def write_spec(folder, name: str):
    data = yaml.safe_load(SANDBOX_SPEC.read_text())
    data.update(name=name, prefix=f"cbm-{name}", tags=[f"cbm-{name}"])
    (folder / name).mkdir()
    path = folder / name / "deployment.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "cbm"


def test_concurrency_limit_outcomes_and_logs(tmp_path, state):
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    work = tmp_path / "work"
    work.mkdir()
    names = ["ok-a", "bad-b", "ok-c", "ok-d"]
    specs = [str(write_spec(tmp_path, n)) for n in names] + [str(tmp_path / "missing" / "deployment.yml")]
    started, done = [], []
    outcomes = fleet.run(specs, "upgrade", jobs=2, argv_of=lambda t: [sys.executable, str(script), str(work), t.name],
                         on_start=started.append, on_done=done.append)

    # at most two at once, and two did run at once
    seen = {n: int((work / f"{n}.seen").read_text()) for n in names}
    assert max(seen.values()) == 2, seen
    assert sorted(t.name for t in started) == sorted(names)
    assert len(done) == len(specs)

    assert [o.label for o in outcomes] == names + [specs[-1]]       # the order given
    by = {o.label: o for o in outcomes}
    for n in ("ok-a", "ok-c", "ok-d"):
        assert by[n].ok and by[n].rc == 0 and by[n].detail == f"{n} finished fine"
    assert (by["bad-b"].rc, by["bad-b"].detail) == (3, "bad-b went wrong")
    missing = by[specs[-1]]
    assert missing.rc == fleet.NOT_RUN and missing.log is None and "no such deployment spec" in missing.detail
    assert fleet.exit_code(outcomes) == 1
    assert fleet.exit_code([o for o in outcomes if o.ok]) == 0

    # each log in its deployment's state folder, stdout and stderr in the order written
    log = by["bad-b"].log
    assert log.parent == state / "bad-b" / "logs" and log.name.endswith("-upgrade.log")
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert log.read_text().splitlines() == ["bad-b: first line on stdout", "bad-b: a line on stderr",
                                            "bad-b: last line on stdout", "cbm: error: bad-b went wrong"]


def test_same_deployment_twice_is_refused(tmp_path, state):
    spec = write_spec(tmp_path, "twice")
    copy = tmp_path / "copy.yml"
    copy.write_text(spec.read_text())
    with pytest.raises(fleet.UserError, match="both deployment twice"):
        fleet.run([str(spec), str(copy)], "status")


def summary_rows(stdout: str) -> dict[str, list[str]]:
    """{deployment: [outcome, duration, detail, log]} from the summary table (long cells wrap: the
    pieces are joined without the spaces the wrapping took away)."""
    rows: list[list[str]] = []
    for line in stdout.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if cells[1]:                  # the outcome never wraps: a new row
            rows.append(cells)
        else:                         # the wrapped rest of the row above
            rows[-1] = [a + b for a, b in zip(rows[-1], cells)]
    return {r[0]: r[1:] for r in rows}


def broken_spec(tmp_path):
    """A spec of a deployment never brought up (no hosts.yml, no cloud entry)."""
    return write_spec(tmp_path, "ghost")


def test_fleet_status_reports_every_failure_and_exits_1(tmp_path, state):
    ghost = broken_spec(tmp_path)
    missing = tmp_path / "nowhere" / "deployment.yml"
    proc = run_cbm("fleet", "status", str(ghost), str(missing), "--jobs", "2",
                   env={"XDG_STATE_HOME": str(state.parent), "OS_CLIENT_CONFIG_FILE": str(tmp_path / "none.yaml")})
    assert proc.returncode == 1, proc.stderr
    rows = summary_rows(proc.stdout)
    assert set(rows) == {"ghost", str(missing)}, proc.stdout
    assert rows["ghost"][0].startswith("failed (exit")
    logs = list((state / "ghost" / "logs").glob("*-status.log"))
    assert len(logs) == 1
    single = run_cbm("status", str(ghost), env={"XDG_STATE_HOME": str(state.parent),
                                                 "OS_CLIENT_CONFIG_FILE": str(tmp_path / "none.yaml")})
    # the fleet ran the single command: its exit code, its error line, its output in the log
    assert rows["ghost"][0] == f"failed (exit {single.returncode})"
    assert single.stderr.strip() in logs[0].read_text()
    assert rows["ghost"][2].replace(" ", "").removesuffix("...") in single.stderr.replace(" ", "")
    assert rows[str(missing)][0] == "not run" and "nosuchdeploymentspec" in rows[str(missing)][2].replace(" ", "")
    assert f"fleet status: ghost started, log {logs[0]}" in proc.stderr


@pytest.mark.parametrize("args, needles", [
    (("fleet", "status"), ("SPEC",)),
    (("fleet", "status", "x.yml", "--jobs", "0"), ("--jobs 0",)),
    (("fleet", "schedule", "x.yml"), ("after --",)),
    (("fleet", "upgrade", "x.yml"), ("--yes",)),
])
def test_bad_fleet_input_is_one_line(tmp_path, state, args, needles):
    assert_one_line_error(run_cbm(*args), *needles, code=2)


@pytest.mark.docker
def test_fleet_status_over_the_live_deployment_and_a_broken_one(live_deployment, tmp_path):
    ghost = broken_spec(tmp_path)
    proc = run_cbm("fleet", "status", str(live_deployment.spec), str(ghost), env=live_deployment.env, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = summary_rows(proc.stdout)
    assert set(rows) == {"live", "ghost"}, proc.stdout
    assert rows["live"][0] == "ok" and rows["live"][2] == "every part answered", rows
    assert rows["ghost"][0].startswith("failed (exit"), rows
    assert re.search(r"fleet status: 1 of 2 deployments succeeded", proc.stdout)
    log = next((live_deployment.state / "logs").glob("*-status.log"))
    text = log.read_text()
    assert "cbm status: deployment live" in text and "swarm nodes" in text
