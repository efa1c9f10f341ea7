"""The extraction workers run the entry point `python -m extractor.extract run ...` in an image
holding only the worker's own requirements (provision/ops/extractor_image.WORKER_REQUIREMENTS):
the entry point and the worker's code must import nothing else (no openstacksdk, ansible, fabric,
pyarrow, ...)."""

import json
import re
import subprocess
import sys
from importlib import metadata

from provision.ops.extractor_image import WORKER_REQUIREMENTS

PROBE = """
import json, sys
at_start = {name.split(".")[0] for name in sys.modules}   # the interpreter's own (site hooks)
sys.modules["boto3"] = None   # as in the image: rasterio imports boto3 only where it is installed (moto here)
from extractor.extract.__main__ import build_parser   # the image's entry point
args = build_parser().parse_args(["run", "--card", "s2", "--res", "-1"])
import extractor.extract.worker   # what the entry point runs
print(json.dumps(sorted({name.split(".")[0] for name, m in sys.modules.items() if m is not None} - at_start)))
"""


def closure(requirements) -> set[str]:
    """Distribution names of the requirements and everything they require (no extras)."""
    seen, todo = set(), [re.split(r"[<>=\[; ]", r)[0] for r in requirements]
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            if "extra ==" not in req:
                todo.append(re.split(r"[<>=!~\[; (]", req)[0])
    return seen


def test_worker_imports_only_its_own_requirements():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert not {"cbm", "provision", "sandbox"} & set(loaded), f"the entry point imports more than extractor: {loaded}"
    allowed = closure(WORKER_REQUIREMENTS) | {"cbm-onboard"}
    dists = metadata.packages_distributions()
    outside = {}
    for module in loaded:
        for dist in dists.get(module, []):
            if dist.lower().replace("_", "-") not in allowed:
                outside[module] = dist
    assert outside == {}, f"the worker imports packages its image does not have: {outside}"
