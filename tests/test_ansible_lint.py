"""ansible-lint passes on the roles and playbooks (production profile), offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_roles_and_playbooks_pass_ansible_lint():
    lint = Path(sys.executable).parent / "ansible-lint"
    env = {**os.environ, "NO_COLOR": "1", "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
           "PATH": f"{lint.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(lint), "--offline", "--profile", "production", "roles", "playbooks"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Passed" in proc.stderr + proc.stdout
