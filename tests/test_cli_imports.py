"""The extraction workers run `cbm extract run` in an image without the cloud-side tools
(openstacksdk, ansible, fabric, paramiko, cryptography): the command line must not need them."""

import subprocess
import sys

CLOUD_PACKAGES = ("openstack", "ansible_runner", "ansible", "fabric", "paramiko", "invoke", "cryptography",
                  "matplotlib", "pyogrio", "pyarrow")

PROBE = f"""
import sys
for name in {CLOUD_PACKAGES!r}:
    sys.modules[name] = None          # import of any of them now fails
from cbm.cli import build_parser
args = build_parser().parse_args(["extract", "run", "--card", "s2", "--res", "-1"])
import extractor.extract.worker       # what `extract run` imports when it runs
print(args.func.__module__)
"""


def test_worker_command_line_needs_no_cloud_tools():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "extractor.extract.cli"
