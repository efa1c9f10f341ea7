"""The sandbox's "VM": a Debian container on the local Docker Engine that behaves like a cloud host.

Two images, both built here (nothing is pulled from a registry):
  cbm-sandbox/base:bookworm  `debootstrap --variant=minbase bookworm` + `docker import` (built once, cached)
  cbm-sandbox/host:bookworm  base + openssh-server, sudo, python3, ... and the user `eouser` (passwordless
                             sudo); rebuilt when its recipe (this file) changes.

A host container runs /sbin/cbm-init as PID 1 (see GUEST_INIT): at every boot it recreates the block
device nodes listed in /etc/cbm-sandbox/devices and their /dev/disk/by-id links (containers lose /dev
on restart; udev makes the links on a real host), gives the boot a new boot_id (Ansible's reboot module
compares it), installs the authorized keys on first boot (like cloud-init), applies the security groups
in /etc/cbm-sandbox/firewall (see firewall.py), and starts the sysvinit services linked in /etc/rc2.d
(ssh, and docker once installed).
`reboot`/`shutdown -r` inside the host make PID 1 stop the services and exit with REBOOT_EXIT_CODE; the
restart policy `on-failure` brings the container back with the same networks, IPs and volumes.

The container gets every capability except SYS_RESOURCE, no seccomp/apparmor confinement, all devices
allowed and the machine's cgroup hierarchies (bound one by one, see cgroup_mounts), so that it can run
its own dockerd (on an anonymous volume at /var/lib/docker, not overlay-on-overlay).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from extractor.errors import CbmError

log = logging.getLogger(__name__)

BASE_IMAGE = "cbm-sandbox/base:bookworm"
HOST_IMAGE = "cbm-sandbox/host:bookworm"
LABEL = "cbm-sandbox"          # every Docker object the sandbox makes carries this label
DEFAULT_USER = "eouser"
MIRROR = "http://deb.debian.org/debian"
REBOOT_EXIT_CODE = 129
GUEST_STATE = "/etc/cbm-sandbox"  # inside the host: devices, authorized_keys

HOST_PACKAGES = [
    "openssh-server", "sudo", "python3", "python3-apt", "iproute2", "ca-certificates", "procps",
    "e2fsprogs", "util-linux", "kmod", "rsync", "curl", "iputils-ping", "less", "lsb-release",
    "iptables",  # the security groups (GUEST_FIREWALL); the iptables-nft that docker.io's dockerd uses too
]
GUEST_FIREWALL_PATH = "/usr/local/sbin/cbm-sandbox-firewall"

# PID 1 of a host. Plain python3 (installed in the image), no dependencies.
GUEST_INIT = r'''#!/usr/bin/python3
"""cbm-sandbox init: PID 1 of a sandbox host (see sandbox/cloud/hostimage.py)."""
import os, signal, subprocess, sys, time, uuid

STATE = "/etc/cbm-sandbox"
USER = "@USER@"
REBOOT = @REBOOT@
request = []


def log(msg):
    print("cbm-init: " + msg, flush=True)


def run(*cmd):
    try:
        return subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=120).returncode
    except Exception as exc:  # a broken service must not stop the boot
        log("%s: %s" % (" ".join(cmd), exc))
        return 1


def make_devices():
    path = os.path.join(STATE, "devices")
    if not os.path.exists(path):
        return
    for line in open(path):
        parts = line.split()
        if len(parts) != 3:
            continue
        dev, major, minor = parts[0], int(parts[1]), int(parts[2])
        try:
            if os.path.exists(dev):
                st = os.stat(dev)
                if os.major(st.st_rdev) == major and os.minor(st.st_rdev) == minor:
                    continue
            tmp = "%s.init%d" % (dev, os.getpid())
            os.mknod(tmp, 0o660 | 0o060000, os.makedev(major, minor))
            os.chmod(tmp, 0o660)
            os.chown(tmp, 0, 6)  # group disk
            os.replace(tmp, dev)
            log("block device %s (%d:%d)" % (dev, major, minor))
        except OSError as exc:
            log("cannot create %s: %s" % (dev, exc))


def make_links():
    # /dev/disk/by-id names of the volumes ("link device" per line), as udev makes them on a real host
    path = os.path.join(STATE, "links")
    if not os.path.exists(path):
        return
    for line in open(path):
        parts = line.split()
        if len(parts) != 2:
            continue
        link, dev = parts
        try:
            os.makedirs(os.path.dirname(link), exist_ok=True)
            tmp = "%s.init%d" % (link, os.getpid())
            os.symlink(os.path.relpath(dev, os.path.dirname(link)), tmp)
            os.replace(tmp, link)
        except OSError as exc:
            log("cannot link %s: %s" % (link, exc))


def new_boot_id():
    with open("/run/cbm-boot_id", "w") as f:
        f.write(str(uuid.uuid4()) + "\n")
    run("mount", "--bind", "/run/cbm-boot_id", "/proc/sys/kernel/random/boot_id")


def install_keys():
    marker = "/var/lib/cbm-sandbox/keys-installed"
    source = os.path.join(STATE, "authorized_keys")
    if os.path.exists(marker) or not os.path.exists(source):
        return
    home = "/home/" + USER
    os.makedirs(home + "/.ssh", mode=0o700, exist_ok=True)
    with open(source) as src, open(home + "/.ssh/authorized_keys", "a") as dst:
        dst.write(src.read())
    os.chmod(home + "/.ssh/authorized_keys", 0o600)
    run("chown", "-R", USER + ":" + USER, home + "/.ssh")
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()


def rc_scripts():
    try:
        names = sorted(n for n in os.listdir("/etc/rc2.d") if n.startswith("S"))
    except FileNotFoundError:
        names = []
    return [n[3:] for n in names if os.path.exists("/etc/init.d/" + n[3:])]


def boot():
    for d in ("/run/sshd", "/run/lock"):
        os.makedirs(d, exist_ok=True)
    make_devices()
    make_links()
    run("mount", "-a")  # fstab (e.g. the data volume by UUID), like a real boot
    new_boot_id()
    install_keys()
    run("ssh-keygen", "-A")
    run("/usr/local/sbin/cbm-sandbox-firewall")  # the security groups, before any service listens
    run("/usr/local/sbin/cbm-sandbox-fixups")
    started = rc_scripts()
    if "ssh" not in started:
        started.append("ssh")
    for name in started:
        log("starting " + name)
        run("/etc/init.d/" + name, "start")
    log("boot finished")
    return started


def shutdown(started):
    for name in reversed(started):
        if name != "cgroupfs-mount":  # the cgroup hierarchies belong to the machine
            run("/etc/init.d/" + name, "stop")
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 2)):
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            return
        end = time.time() + wait
        while time.time() < end:
            try:
                if os.waitpid(-1, os.WNOHANG) == (0, 0):
                    time.sleep(0.1)
            except ChildProcessError:
                return


def main():
    signal.signal(signal.SIGTERM, lambda *a: request.append("poweroff"))
    signal.signal(signal.SIGINT, lambda *a: request.append("reboot"))
    signal.signal(signal.SIGUSR1, lambda *a: request.append("reboot"))
    signal.signal(signal.SIGUSR2, lambda *a: request.append("poweroff"))
    started = boot()
    while not request:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.5)
    log(request[0])
    shutdown(started)
    sys.exit(REBOOT if request[0] == "reboot" else 0)


main()
'''

# reboot / shutdown / halt / poweroff inside a host: ask PID 1, a second later so the caller's SSH
# command can return (Ansible's reboot module runs `shutdown -r 0 "msg"` and expects the drop after).
GUEST_SHUTDOWN = r'''#!/bin/sh
# cbm-sandbox: ask PID 1 (cbm-init) to reboot or power off.
action=poweroff
case "$(basename "$0")" in reboot) action=reboot ;; esac
for arg in "$@"; do
  case "$arg" in -r|--reboot) action=reboot ;; -c) echo "no pending shutdown"; exit 0 ;; esac
done
if [ "$action" = reboot ]; then sig=USR1; else sig=USR2; fi
echo "System is going down ($action)."
( sleep 1; kill -s $sig 1 ) >/dev/null 2>&1 </dev/null &
exit 0
'''

GUEST_RUNLEVEL = "#!/bin/sh\necho N 2\n"

# Adapts package scripts to a host without CAP_SYS_RESOURCE: init scripts that raise hard limits
# (`ulimit -n 1048576` in /etc/init.d/docker) would fail. Run by policy-rc.d, i.e. by invoke-rc.d
# before a package starts or restarts its service, and at every boot.
GUEST_FIXUPS = r'''#!/bin/sh
# cbm-sandbox: no CAP_SYS_RESOURCE in a sandbox host, so `ulimit` may not raise hard limits there.
for f in /etc/init.d/*; do
  [ -f "$f" ] || continue
  if grep -qE '^[[:space:]]*ulimit [^|]*$' "$f"; then
    sed -i -E 's/^([[:space:]]*ulimit [^|]*)$/\1 2>\/dev\/null || true/' "$f"
  fi
done
exit 0
'''

# The security groups of the host's ports (sandbox/cloud/firewall.py computes them): the sandbox cloud
# writes an iptables-restore file for the chain CBM-SG-INGRESS of the mangle table (`-`: from stdin),
# applied in one transaction, then hooked first in PREROUTING for what enters on the cloud interfaces.
GUEST_FIREWALL = r'''#!/bin/sh
# cbm-sandbox: enforce the security groups of this host (rules written by the sandbox cloud).
set -e
f=/etc/cbm-sandbox/firewall
exec 9>/run/cbm-sandbox-firewall.lock
flock 9
if [ "$1" = - ]; then cat > "$f.new"; mv "$f.new" "$f"; fi
[ -s "$f" ] || exit 0
iptables-restore -w --noflush < "$f"
iptables -w -t mangle -C PREROUTING -i eth+ -j CBM-SG-INGRESS 2>/dev/null ||
  iptables -w -t mangle -I PREROUTING 1 -i eth+ -j CBM-SG-INGRESS
'''

# docker.io recommends cgroupfs-mount, whose stop unmounts and removes /sys/fs/cgroup/*: those are the
# machine's hierarchies (bound into the host), so the host's copy of cgroupfs-umount does nothing.
GUEST_NO_UMOUNT = "#!/bin/sh\n# cbm-sandbox: the cgroup hierarchies belong to the machine; never unmount them\nexit 0\n"

# invoke-rc.d asks policy-rc.d before starting a service from a package's maintainer script.
GUEST_POLICY = "#!/bin/sh\n/usr/local/sbin/cbm-sandbox-fixups\nexit 0\n"

DOCKERFILE = """\
FROM {base}
ENV DEBIAN_FRONTEND=noninteractive
RUN printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \\
 && apt-get update && apt-get install -y --no-install-recommends {packages} \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \\
 && rm -f /etc/ssh/ssh_host_* \\
 && useradd -m -s /bin/bash -G sudo {user} \\
 && echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-{user} && chmod 440 /etc/sudoers.d/90-{user} \\
 && mkdir -p {guest_state} /eodata && touch {guest_state}/devices
# systemd-sysv (pulled in by docker.io's recommends) must not replace these, nor cgroupfs-mount's
# cgroupfs-umount run: divert the packages' copies
RUN for f in /sbin/shutdown /sbin/reboot /sbin/halt /sbin/poweroff /sbin/runlevel /usr/bin/cgroupfs-umount; do \\
      dpkg-divert --local --rename --divert $f.distrib --add $f; done
COPY cbm-init /sbin/cbm-init
COPY cbm-shutdown /sbin/shutdown
COPY cbm-shutdown /sbin/reboot
COPY cbm-shutdown /sbin/halt
COPY cbm-shutdown /sbin/poweroff
COPY runlevel /sbin/runlevel
COPY cbm-sandbox-fixups /usr/local/sbin/cbm-sandbox-fixups
COPY cbm-sandbox-firewall /usr/local/sbin/cbm-sandbox-firewall
COPY policy-rc.d /usr/sbin/policy-rc.d
COPY cgroupfs-umount /usr/bin/cgroupfs-umount
RUN chmod 755 /sbin/cbm-init /sbin/shutdown /sbin/reboot /sbin/halt /sbin/poweroff /sbin/runlevel \\
      /usr/local/sbin/cbm-sandbox-fixups /usr/local/sbin/cbm-sandbox-firewall /usr/sbin/policy-rc.d \\
      /usr/bin/cgroupfs-umount
LABEL {label}=1 {label}.recipe={recipe}
STOPSIGNAL SIGTERM
CMD ["/sbin/cbm-init"]
"""


def _docker(*args: str, check: bool = True, input: str | bytes | None = None, capture: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["docker", *args], input=input, capture_output=capture, timeout=timeout,
                              text=not isinstance(input, bytes))
    except FileNotFoundError:
        raise CbmError("docker: command not found; run scripts/bootstrap.sh (installs docker.io)") from None
    if check and proc.returncode != 0:
        err = (proc.stderr or "").strip().splitlines()
        raise CbmError(f"docker {args[0]} failed: {err[-1] if err else 'exit ' + str(proc.returncode)}")
    return proc


def image_labels(image: str) -> dict | None:
    """The labels of a local image, or None when it does not exist."""
    proc = _docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip() or "null") or {}


def _host_files() -> dict[str, str]:
    init = GUEST_INIT.replace("@USER@", DEFAULT_USER).replace("@REBOOT@", str(REBOOT_EXIT_CODE))
    return {"cbm-init": init, "cbm-shutdown": GUEST_SHUTDOWN, "runlevel": GUEST_RUNLEVEL,
            "cbm-sandbox-fixups": GUEST_FIXUPS, "policy-rc.d": GUEST_POLICY, "cgroupfs-umount": GUEST_NO_UMOUNT,
            "cbm-sandbox-firewall": GUEST_FIREWALL}


def _recipe() -> str:
    h = hashlib.sha256()
    h.update(DOCKERFILE.encode())
    h.update(" ".join(HOST_PACKAGES).encode())
    for name, text in sorted(_host_files().items()):
        h.update(name.encode() + b"\0" + text.encode())
    return h.hexdigest()[:16]


def ensure_base_image(rebuild: bool = False) -> str:
    """Build `cbm-sandbox/base:bookworm` with debootstrap + docker import unless it exists (~25 s)."""
    if not rebuild and image_labels(BASE_IMAGE) is not None:
        return BASE_IMAGE
    if shutil.which("debootstrap") is None:
        raise CbmError("debootstrap: command not found; run scripts/bootstrap.sh (installs debootstrap)")
    log.warning("building %s with debootstrap (once; about half a minute)", BASE_IMAGE)
    with tempfile.TemporaryDirectory(prefix="cbm-sandbox-base-") as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            raise CbmError(f"debootstrap bookworm failed: {tail[0] if tail else proc.returncode}; "
                           f"is {MIRROR} reachable?")
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["docker", "import", "--change", f"LABEL {LABEL}=1", "--change",
                              'CMD ["/bin/bash"]', "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True,
                             text=True)
        tar.stdout.close()
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise CbmError(f"docker import of {BASE_IMAGE} failed: {imp.stderr.strip()}")
    return BASE_IMAGE


@contextlib.contextmanager
def _building():
    """One image build at a time on this machine (two sandboxes starting together build it once)."""
    with open(Path(tempfile.gettempdir()) / "cbm-sandbox-images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_host_image(rebuild: bool = False) -> str:
    """Build `cbm-sandbox/host:bookworm` (from the base image) unless it exists with this recipe."""
    recipe = _recipe()

    def current() -> bool:
        labels = image_labels(HOST_IMAGE)
        return not rebuild and labels is not None and labels.get(f"{LABEL}.recipe") == recipe

    if current():
        return HOST_IMAGE
    with _building():
        if current():   # built meanwhile by another process
            return HOST_IMAGE
        return _build_host_image(recipe)


def _build_host_image(recipe: str) -> str:
    ensure_base_image()
    log.warning("building %s (apt-get install in the base image; about half a minute)", HOST_IMAGE)
    with tempfile.TemporaryDirectory(prefix="cbm-sandbox-host-") as tmp:
        ctx = Path(tmp)
        (ctx / "Dockerfile").write_text(DOCKERFILE.format(
            base=BASE_IMAGE, packages=" ".join(HOST_PACKAGES), user=DEFAULT_USER, guest_state=GUEST_STATE,
            label=LABEL, recipe=recipe))
        for name, text in _host_files().items():
            (ctx / name).write_text(text)
        env = {**os.environ, "DOCKER_BUILDKIT": "0"}
        proc = subprocess.run(["docker", "build", "-q", "-t", HOST_IMAGE, str(ctx)], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-3:]
            raise CbmError(f"docker build of {HOST_IMAGE} failed: {' | '.join(tail)}")
    return HOST_IMAGE


def cgroup_mounts() -> list[str]:
    """The cgroup hierarchies a nested dockerd needs, as bind-mount options.

    On a cgroup v1 host, /sys/fs/cgroup is a tmpfs holding one mount per hierarchy. Binding that tmpfs
    itself into a host is dangerous: a `rmdir /sys/fs/cgroup/cpu` inside (cgroupfs-umount does it when
    a host with docker.io shuts down) detaches the hierarchy from this machine's namespace too, and the
    Docker Engine here stops working. So each hierarchy is bound on its own, over a tmpfs of the
    container (not Docker's cgroup mount, whose container-scoped roots confuse a nested runc). On a
    pure cgroup v2 host, /sys/fs/cgroup is the cgroup2 fs itself and is bound whole."""
    mounts = ["--tmpfs", "/sys/fs/cgroup:mode=755"]  # the host's own (replaces Docker's cgroup mount)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point, fstype = fields[4], fields[sep + 1]
            if point == "/sys/fs/cgroup" and fstype == "cgroup2":
                return ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
            if point.startswith("/sys/fs/cgroup/") and fstype in ("cgroup", "cgroup2") and point.count("/") == 4:
                mounts += ["-v", f"{point}:{point}:rw"]
    return mounts


def host_run_options() -> list[str]:
    """The `docker create/run` options that let a host run sshd, sysvinit services and its own dockerd."""
    opts = ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
            "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
            "--device-cgroup-rule", "a *:* rwm",
            *cgroup_mounts(),
            "-v", "/var/lib/docker",              # anonymous volume: nested dockerd not on overlay
            "--tmpfs", "/run:exec,mode=755",
            "--restart", "on-failure",            # `reboot` inside = exit REBOOT_EXIT_CODE = restart
            "--stop-timeout", "20"]
    if Path("/lib/modules").is_dir():
        opts += ["-v", "/lib/modules:/lib/modules:ro"]
    return opts


def create_host(name: str, *, authorized_keys: str, network: str | None = None, ip: str | None = None,
                hostname: str | None = None, labels: dict[str, str] | None = None,
                mounts: list[tuple[str, str, bool]] = (), start: bool = True) -> str:
    """Create (and by default start) a host container; returns its id.

    name: container name (use your own prefix); authorized_keys: public key line(s) installed for
    `eouser` at first boot; network/ip: a Docker network to attach (optionally with a fixed address);
    mounts: (host path, container path, read_only). More networks can be connected before start with
    `docker network connect`. The host answers SSH a few seconds after start (see wait_for_ssh)."""
    image = ensure_host_image()
    args = ["create", "--name", name, "--hostname", (hostname or name)[:63],
            "--label", f"{LABEL}=1", *host_run_options()]
    for key, value in (labels or {}).items():
        args += ["--label", f"{key}={value}"]
    if network:
        args += ["--network", network]
        if ip:
            args += ["--ip", ip]
    for src, dst, ro in mounts:
        args += ["-v", f"{src}:{dst}:{'ro' if ro else 'rw'}"]
    if not any(dst == "/data" for _, dst, _ in mounts):
        # A VM's root disk is ext4; the container's is overlayfs, where a nested dockerd cannot keep
        # its data-root (/data/docker on hosts without a data volume). An anonymous volume stands in
        # for that part of the root disk; an attached data volume is mounted over it.
        args += ["-v", "/data"]
    args.append(image)
    cid = _docker(*args).stdout.strip()
    write_guest_file(cid, "authorized_keys", authorized_keys.rstrip("\n") + "\n")
    if start:
        _docker("start", cid)
    return cid


def write_guest_file(container: str, name: str, text: str) -> None:
    """Put /etc/cbm-sandbox/<name> into a host (running or not) with `docker cp`."""
    with tempfile.TemporaryDirectory(prefix="cbm-sandbox-cp-") as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        os.chmod(path, 0o644)
        _docker("cp", str(path), f"{container}:{GUEST_STATE}/{name}")


def by_id_link(serial: str) -> str:
    """The name a virtio disk with this serial (Nova: the volume id) gets from udev: the first 20 characters."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", serial):
        raise ValueError(f"not a volume serial: {serial!r}")
    return f"/dev/disk/by-id/virtio-{serial[:20]}"


def add_block_device(container: str, device: str, major: int, minor: int, serial: str | None = None) -> None:
    """Make `device` (e.g. /dev/vdb) a block device node major:minor inside a running host, with its
    /dev/disk/by-id/virtio-<serial> link when a serial (the volume id) is given, and record both in
    /etc/cbm-sandbox/devices and links so that they come back after a reboot."""
    # node first under a temporary name, then renamed: the host's init may be creating it at boot too
    script = (f"set -e; f={GUEST_STATE}/devices; touch $f; grep -v '^{device} ' $f > $f.new || true; "
              f"echo '{device} {major} {minor}' >> $f.new; mv $f.new $f; t={device}.cbm$$; "
              f"mknod -m 660 $t b {major} {minor}; chgrp disk $t; mv -f $t {device}")
    if serial:
        link = by_id_link(serial)
        target = os.path.relpath(device, os.path.dirname(link))
        script += (f"; g={GUEST_STATE}/links; touch $g; grep -v ' {device}$' $g > $g.new || true; "
                   f"echo '{link} {device}' >> $g.new; mv $g.new $g; mkdir -p {os.path.dirname(link)}; "
                   f"ln -sfn {target} {link}")
    _docker("exec", container, "sh", "-c", script)


def remove_block_device(container: str, device: str) -> None:
    """Remove a block device node (and its by-id links) from a host and from its boot lists (no-op if
    the host is down)."""
    script = (f"f={GUEST_STATE}/devices; grep -v '^{device} ' $f > $f.new; mv $f.new $f; rm -f {device}; "
              f"g={GUEST_STATE}/links; [ -f $g ] || exit 0; grep ' {device}$' $g | cut -d' ' -f1 | xargs -r rm -f; "
              f"grep -v ' {device}$' $g > $g.new; mv $g.new $g")
    _docker("exec", container, "sh", "-c", script, check=False)


def container_ips(container: str) -> dict[str, str]:
    """{docker network name: IPv4 address} of a container."""
    proc = _docker("inspect", "--format", "{{json .NetworkSettings.Networks}}", container)
    return {net: info.get("IPAddress", "") for net, info in (json.loads(proc.stdout) or {}).items()}


def wait_for_ssh(address: str, port: int = 22, timeout: float = 60.0) -> None:
    """Wait until an SSH server banner comes from address:port."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=2) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.2)
    raise CbmError(f"no SSH answer from {address}:{port} within {timeout:.0f} s ({last})")


if __name__ == "__main__":  # python -m sandbox.cloud.hostimage  (build the images)
    logging.basicConfig(level=logging.INFO)
    print(ensure_host_image())
