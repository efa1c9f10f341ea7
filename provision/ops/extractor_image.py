"""The extractor image: what the swarm service runs (`python -m extractor.extract run`: numba, rasterio, psycopg2).

Built on the operator's machine from a base image and a wheelhouse of the project and the worker's
own dependencies (no compiler, no network inside the build), then handed to the hosts with
`docker save` / `docker load` (see roles/extractor). In production the base is the official
`debian:bookworm-slim` (pulled); the sandbox and the tests, where nothing can be pulled, use the
debootstrapped `cbm-sandbox/base:bookworm`.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from extractor.errors import CbmError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
REPOSITORY = "cbm/extractor"  # tagged <version>-<recipe>: a code change is a new tag the hosts load
PRODUCTION_BASE = "debian:bookworm-slim"
LABEL = "cbm.extractor.recipe"
# What a worker needs at run time; the cloud-side tools (openstacksdk, ansible, fabric) stay out.
WORKER_REQUIREMENTS = ["numba", "numpy", "rasterio", "psycopg2-binary", "pyyaml", "rich", "shapely", "pyogrio"]

DOCKERFILE = """\
FROM {base} AS build
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/cbm \\
 && /opt/cbm/bin/pip install -q --no-compile --no-index --find-links /tmp/wheels {requirements} \\
 && /opt/cbm/bin/pip install -q --no-compile --no-index --no-deps /tmp/wheels/cbm_onboard-*.whl \\
 && /opt/cbm/bin/pip uninstall -q -y pip

FROM {base}
RUN apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 ca-certificates \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=build /opt/cbm /opt/cbm
ENV PATH=/opt/cbm/bin:$PATH NUMBA_CACHE_DIR=/tmp/numba-cache PYTHONUNBUFFERED=1
LABEL {label}={recipe}
ENTRYPOINT ["/opt/cbm/bin/python", "-m", "extractor.extract"]
CMD ["run", "--help"]
"""


def _sources_digest() -> str:
    h = hashlib.sha256()
    for pkg in ("extractor",):   # what the image runs: python -m extractor.extract
        for path in sorted((REPO / pkg).rglob("*.py")):
            h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    h.update((REPO / "pyproject.toml").read_bytes())
    return h.hexdigest()[:16]


def _image_recipe(image: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", f'{{{{index .Config.Labels "{LABEL}"}}}}', image],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build(base: str = PRODUCTION_BASE, rebuild: bool = False) -> str:
    """Build the extractor image unless one with the same sources and base exists. Returns its name."""
    recipe = hashlib.sha256(f"{_sources_digest()} {base} {DOCKERFILE}".encode()).hexdigest()[:16]
    image = f"{REPOSITORY}:{version('cbm-onboard')}-{recipe[:10]}"
    if not rebuild and _image_recipe(image) == recipe:
        return image
    # one build at a time on this machine (`cbm fleet` over deployments, two commands at once): the
    # second waits and finds the image built
    with open(Path(tempfile.gettempdir()) / "cbm-extractor-image.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not rebuild and _image_recipe(image) == recipe:
            return image
        return _build(image, base, recipe)


def _build(image: str, base: str, recipe: str) -> str:
    log.warning("building %s from %s", image, base)
    with tempfile.TemporaryDirectory(prefix="cbm-extractor-image-") as tmp:
        ctx = Path(tmp)
        wheels = ctx / "wheels"
        pip = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels)]
        # The project is copied first: building in the checkout would leave build/ behind.
        source = ctx / "source"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "bench", "tests", "__pycache__", "*.egg-info", ".pytest_cache"))
        for cmd in (pip + WORKER_REQUIREMENTS, pip + ["--no-deps", str(source)]):
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
                raise CbmError(f"building the extractor wheelhouse failed: {tail}")
        shutil.rmtree(source)
        (ctx / "Dockerfile").write_text(DOCKERFILE.format(
            base=base, requirements=" ".join(WORKER_REQUIREMENTS), label=LABEL, recipe=recipe))
        proc = subprocess.run(["docker", "build", "-q", "-t", image, str(ctx)], capture_output=True, text=True,
                              env={"DOCKER_BUILDKIT": "0", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/bin"})
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise CbmError(f"docker build of {image} failed: {tail}")
    return image


ARCHIVE_PREFIX = REPOSITORY.replace("/", "_") + "-"
ARCHIVE_SUFFIX = ".tar.gz"


def archive_path(folder: Path, image: str) -> Path:
    """Where the `docker save` archive of one of our images lives in a deployment's images folder."""
    return folder / f"{ARCHIVE_PREFIX}{image.split(':', 1)[1]}{ARCHIVE_SUFFIX}"


def archived(folder: Path) -> tuple[str, Path] | None:
    """The newest image archived in the folder and its archive (what the hosts were last given), or None."""
    archives = sorted(folder.glob(f"{ARCHIVE_PREFIX}*{ARCHIVE_SUFFIX}"), key=lambda p: p.stat().st_mtime) \
        if folder.is_dir() else []
    if not archives:
        return None
    return f"{REPOSITORY}:{archives[-1].name[len(ARCHIVE_PREFIX):-len(ARCHIVE_SUFFIX)]}", archives[-1]


def save(image: str, out: Path) -> Path:
    """`docker save` the image to a gzipped tarball (for `docker load` on hosts without a registry; about
    2.5 times smaller, so every host that needs the image gets it that much sooner)."""
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with open(partial, "wb", opener=lambda path, flags: os.open(path, flags, 0o600)) as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as packed:
        proc = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        shutil.copyfileobj(proc.stdout, packed, 1 << 20)
        err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        partial.unlink(missing_ok=True)
        raise CbmError(f"docker save {image} failed: {err.strip()}")
    partial.rename(out)
    return out
