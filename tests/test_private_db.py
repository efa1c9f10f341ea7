"""The database is private, on the shared live sandbox deployment (`live_deployment`, whose spec has
`ingress.db: []`): PostGIS publishes its port on the manager's private address only, pg_hba admits the
private network and nothing wider, and this machine reaches it only through the SSH tunnel to the
manager (`cbm status`, `cbm db backup`), as the owner; the workers log in as their own role."""

from __future__ import annotations

import ipaddress
import re
import socket
import stat

import psycopg2
import pytest

pytestmark = pytest.mark.docker


@pytest.mark.timeout(2400)   # run alone, it pays for the session's cold live deployment
def test_the_database_is_private_and_reached_through_the_ssh_tunnel(live_deployment, tmp_path):
    dep = live_deployment
    hosts = dep.hosts
    public, port = hosts["vars"]["cbm_manager_public_ip"], hosts["vars"]["cbm_db_port"]
    private = next(iter(hosts["children"]["manager"]["hosts"].values()))["private_ip"]

    # published on the manager's private address only: nothing listens on the floating IP (nor 0.0.0.0)
    assert dep.ssh("manager", 0, "sudo docker port cbm-postgis 5432/tcp").split() == [f"{private}:{port}"]
    listening = {line.split()[3] for line in dep.ssh("manager", 0, f"ss -Hltn 'sport = :{port}'").splitlines()}
    assert listening <= {f"{private}:{port}"}, listening      # docker-proxy, if the engine runs one
    with pytest.raises(OSError):      # refused, or dropped by the security group
        socket.create_connection((public, port), timeout=5).close()

    # pg_hba: the private network with the password, nothing wider, no TLS-only networks (ingress.db: [])
    hba = dep.ssh("manager", 0, "sudo cat /etc/cbm/postgis/conf/pg_hba.conf")
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    networks = [ipaddress.ip_network(r[3]) for r in rules if r[0] != "local"]
    assert all(n.prefixlen >= 8 for n in networks), hba                     # no 0.0.0.0/0, no ::/0
    assert "0.0.0.0/0" not in hba and "::/0" not in hba
    assert any(ipaddress.ip_address(private) in n and n.prefixlen >= 16 for n in networks), hba
    assert not [r for r in rules if r[0] == "hostssl"]
    assert {r[-1] for r in rules if r[0] != "local"} == {"scram-sha-256"}

    # this machine's commands go through the tunnel, as the owner
    status = dep.cbm("status", str(dep.spec))
    assert "note: database" not in status.stdout and "PostGIS" not in status.stderr
    out = tmp_path / "private.dump"
    backup = dep.cbm("db", "backup", str(dep.spec), "--out", str(out))
    assert re.search(rf"tunnelled over SSH to {re.escape(private)}:{port} on the manager", backup.stdout), backup.stdout
    assert out.read_bytes()[:5] == b"PGDMP" and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert dep.query("SELECT current_user, inet_server_port()") == [("postgres", 5432)]

    # the hosts' own containers are admitted too (a one-box deployment runs its workers on the manager):
    # a wrong password is refused by the password check, not by pg_hba
    image = dep.ssh("manager", 0, "sudo docker inspect -f '{{.Config.Image}}' cbm-postgis").strip()
    probe = dep.ssh("manager", 0, f"sudo docker run --rm --entrypoint psql {image} 'host={private} port={port} "
                                  "user=cbm_worker dbname=postgres password=wrong connect_timeout=5' -c 'SELECT 1' 2>&1",
                    check=False)
    assert "password authentication failed" in probe, probe

    # the workers' role exists, can log in (from the private network) and is no superuser
    assert dep.query("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'cbm_worker'") == [(True, False)]
    worker_password = (dep.state / "db_worker_password").read_text().strip()
    tunnel = dep.tunnel()
    with psycopg2.connect(host=tunnel.host, port=tunnel.port, user="cbm_worker", dbname="postgres",
                          password=worker_password, connect_timeout=10) as conn, conn.cursor() as cur:
        cur.execute("SELECT has_table_privilege('sigs', 'INSERT'), has_table_privilege('sigs', 'SELECT'),"
                    " has_schema_privilege('public', 'CREATE')")
        assert cur.fetchone() == (True, False, False)
