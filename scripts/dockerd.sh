#!/usr/bin/env bash
# Makes sure a Docker Engine answers on this machine; starts dockerd by hand when it does not
# (this kind of machine has no init system for it). Needs root.
set -euo pipefail
if docker info >/dev/null 2>&1; then exit 0; fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
log=${CBM_DOCKERD_LOG:-/var/log/cbm-dockerd.log}
echo "dockerd: starting (log: $log)"
$SUDO sh -c "nohup dockerd >'$log' 2>&1 &"
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "dockerd: did not come up within 60 s; see $log" >&2
exit 1
