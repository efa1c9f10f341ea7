#!/usr/bin/env bash
# Installs everything cbm-onboard needs on a fresh Debian 12 machine: system packages,
# a virtualenv in .venv with the project and its test tools. Safe to re-run: it only
# installs what is missing. Source it (". scripts/bootstrap.sh") or run it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# System packages: PostGIS (server for the local/test database, client tools), Docker Engine
# (sandbox hosts, swarm), debootstrap (base images: nothing can be pulled here), GDAL CLI tools,
# rsync/ssh for Ansible, iproute2 and kmod/util-linux for loop devices, fdisk (sfdisk: the tests'
# partitioned disk).
APT_PACKAGES=(
  postgresql-15 postgresql-15-postgis-3 postgresql-client-15
  docker.io debootstrap gdal-bin rsync openssh-client
  iproute2 util-linux fdisk e2fsprogs kmod make python3-venv ca-certificates
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python environment.
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.cbm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing Python packages into .venv"
  log=.venv/pip-install.log
  if ! { .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e ".[test,sandbox]"; } >"$log" 2>&1; then
    tail -20 "$log" >&2
    echo "bootstrap: pip install failed; full log: $log" >&2
    exit 1
  fi
  touch "$stamp"
fi
