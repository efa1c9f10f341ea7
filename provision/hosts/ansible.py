"""The ansible-runner driver: run one of playbooks/ on a deployment's hosts (the only runner of the project).

The hosts come from the inventory `cbm up` wrote next to the spec (inventories/<name>/hosts.yml).
Every run gets its own ansible-runner private data dir under the deployment's state folder,
    ${XDG_STATE_HOME:-~/.local/state}/cbm/<name>/runs/<UTC timestamp>/   (artifacts/ inside)
The terminal shows a line per task (and the hosts it changed or failed on) and a summary per
host; on failure one line names the host, the task and the run's artifacts, and the exit code is
ansible-playbook's (2 a host failed, 4 a host unreachable).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import ansible_runner

from extractor.errors import CbmError, one_line
from provision.hosts import inventory as inventories
from provision.hosts import ssh
from provision.hosts.files import DeploymentFiles

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
ROLES = REPO / "roles"


def run_playbook(spec, playbook: str, variables: dict, check: bool = False, out=None,
                 verb: str = "running", limit: str | None = None) -> int:
    """Run playbooks/<playbook> on the deployment with these variables: returns 0, or raises CbmError
    naming the host, task and artifacts (exit code = runner rc)."""
    out = out or sys.stdout
    inventory = inventories.read(spec)
    hosts = inventory.hosts
    # limited to a group or a host: only those must answer (e.g. the manager while a worker leaves)
    waited = [h for h in hosts if limit in (h.group, h.name)] if limit else []
    ssh.wait_for_hosts(waited or hosts, timeout=spec.wait_timeout, report=lambda m: print(m, file=out, flush=True))

    run_dir = DeploymentFiles(spec.name).new_run_dir()
    use_venv_ansible()
    printer = Progress(out, check)
    print(f"{verb} {playbook} on {spec.name} ({len(hosts)} hosts){' in check mode' if check else ''}; "
          f"run folder {run_dir}", file=out, flush=True)
    cmdline = " ".join(x for x in ("--check" if check else "", f"--limit {limit}" if limit else "") if x)
    started = time.monotonic()
    runner = ansible_runner.run(
        private_data_dir=str(run_dir),
        project_dir=str(PLAYBOOKS),
        playbook=playbook,
        inventory=str(inventory.path.resolve()),
        extravars=variables,
        cmdline=cmdline or None,
        envvars={
            "ANSIBLE_ROLES_PATH": str(ROLES),
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_SSH_RETRIES": "3",
        },
        quiet=True,
        event_handler=printer.on_event,
        rotate_artifacts=0,
    )
    printer.summary(time.monotonic() - started)
    rc = runner.rc if runner.rc is not None else 1
    if runner.status == "successful" and rc == 0:
        return 0
    artifacts = Path(runner.config.artifact_dir)
    if printer.failure:
        host, task, msg = printer.failure
        message = f"{playbook} failed on {host} at '{task}': {msg} (run artifacts: {artifacts})"
    else:
        lines = [ln for ln in (artifacts / "stdout").read_text(errors="replace").splitlines() if ln.strip()] \
            if (artifacts / "stdout").exists() else []
        last = one_line(lines[-1], 400) if lines else f"{runner.status}, ansible rc {rc}"
        message = f"{playbook} failed: {last} (run artifacts: {artifacts})"
    err = CbmError(message)
    err.exit_code = rc or 1
    raise err


def use_venv_ansible() -> None:
    """Put the ansible-playbook next to the Python running cbm (the venv's) first on PATH."""
    here = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if (Path(here) / "ansible-playbook").exists() and path.split(os.pathsep)[0] != here:
        os.environ["PATH"] = here + os.pathsep + path


def failure_message(res: dict) -> str:
    if not isinstance(res, dict):
        return one_line(res, 400)
    if res.get("censored"):
        return "(details hidden: the task handles a secret)"
    for item in res.get("results") or []:
        if isinstance(item, dict) and item.get("failed"):
            return failure_message(item)
    msg = res.get("msg") or ""
    stderr = (res.get("stderr") or "").strip()
    if stderr and (not msg or msg.startswith("non-zero return code")):
        msg = stderr.splitlines()[-1]
    return one_line(msg or res.get("reason") or "failed", 400)


class Progress:
    """Turns runner events into a line per task and a per-host summary."""

    def __init__(self, out, check: bool):
        self.out = out
        self.check = check
        self.tasks = 0
        self.failure: tuple[str, str, str] | None = None
        self.stats: dict = {}
        self.task_name = ""

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def on_event(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host", "")
        if kind == "playbook_on_play_start":
            self.say(f"PLAY {data.get('play', '')}")
        elif kind in ("playbook_on_task_start", "playbook_on_handler_task_start"):
            if data.get("task", "").startswith("Validating arguments against arg spec"):
                return True
            self.tasks += 1
            role = data.get("role")
            self.task_name = f"{role} : {data.get('task', '')}" if role else data.get("task", "")
            prefix = "handler " if kind == "playbook_on_handler_task_start" else ""
            self.say(f"  [{self.tasks:3d}] {prefix}{self.task_name}")
        elif kind == "runner_on_ok" and (data.get("res") or {}).get("changed"):
            self.say(f"        {'would change' if self.check else 'changed'}: {host}")
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            msg = failure_message(data.get("res") or {})
            self.say(f"        FAILED: {host}: {msg}")
            self.failure = self.failure or (host, self.task_label(data), msg)
        elif kind == "runner_on_unreachable":
            msg = failure_message(data.get("res") or {})
            self.say(f"        UNREACHABLE: {host}: {msg}")
            self.failure = self.failure or (host, self.task_label(data), f"unreachable: {msg}")
        elif kind == "playbook_on_stats":
            self.stats = data
        return True

    def task_label(self, data: dict) -> str:
        role = data.get("role")
        task = data.get("task", "")
        return f"{role} : {task}" if role else task

    def summary(self, seconds: float) -> None:
        if not self.stats:
            return
        hosts = sorted({h for key in ("ok", "changed", "failures", "dark", "skipped") for h in self.stats.get(key) or {}})
        self.say(f"summary ({seconds:.0f} s){' - check mode, nothing changed' if self.check else ''}:")
        width = max((len(h) for h in hosts), default=4)
        for h in hosts:
            get = lambda key: (self.stats.get(key) or {}).get(h, 0)  # noqa: E731
            self.say(f"  {h:<{width}}  ok={get('ok')} changed={get('changed')} failed={get('failures')} "
                     f"unreachable={get('dark')} skipped={get('skipped')}")
