"""A local TCP port forwarded over SSH to an address the remote host reaches (like `ssh -L`), that
connects SSH again by itself after a drop.

The controller reaches a deployment's PostGIS this way (provision/ops/deployment.py): the database
listens on the manager's private address only, and the SSH connection to the manager checks the host
key pinned in the deployment's state folder. `Tunnel(connect, remote)` listens on 127.0.0.1 at a port
the kernel picks (known at once: `.port`), so psycopg2, pg_dump and psql are simply pointed at it.

SSH is connected on the first client connection (or by `check()`), and connected again on the first
client connection after it dropped (the manager rebooted, the network cut): a client that retries
(the progress polls of `cbm extract swarm`, a worker's reconnect) gets a working tunnel without the
caller doing anything. A client whose channel cannot be opened sees its connection closed; the reason
is kept in `last_error`.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable

from paramiko import ChannelException
from paramiko.ssh_exception import BadHostKeyException, SSHException

from extractor.errors import CbmError, one_line

CHUNK = 1 << 16           # bytes moved per read, each way
WINDOW = 8 << 20          # SSH channel window: a pg_dump over a long path is not held back by round trips
KEEPALIVE = 15            # seconds between SSH keepalives: a dead link is noticed while idle


class Tunnel:
    """127.0.0.1:`port` forwarded through the SSH connections `connect()` makes to `remote` (host, port)
    as the SSH server sees it. `where` names the SSH server in messages."""

    def __init__(self, connect: Callable, remote: tuple[str, int], where: str, timeout: float = 10.0):
        self._connect = connect
        self.remote = (str(remote[0]), int(remote[1]))
        self.where = where
        self.timeout = timeout
        self.last_error: str | None = None
        self._conn = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.host, self.port = self._listener.getsockname()
        threading.Thread(target=self._accept, name=f"tunnel-{self.port}", daemon=True).start()

    def __repr__(self) -> str:
        return f"Tunnel({self.host}:{self.port} -> {self.where} -> {self.remote[0]}:{self.remote[1]})"

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- the SSH connection ------------------------------------------------------------------
    def _transport(self):
        """(connection, transport): the live SSH connection, made (again) when there is none or it died."""
        with self._lock:
            if self.closed:
                raise CbmError(f"the SSH tunnel to {self.where} is closed")
            conn = self._conn
            if conn is None or conn.transport is None or not conn.transport.is_active():
                self._forget(conn)
                conn = self._connect()
                try:
                    conn.open()
                except BaseException:
                    conn.close()
                    raise
                conn.transport.set_keepalive(KEEPALIVE)
                self._conn = conn
            return conn, conn.transport

    def _forget(self, conn) -> None:
        """Drop a connection that failed us (if it is still the current one): the next client makes a new one."""
        if conn is None:
            return
        if self._conn is conn:
            self._conn = None
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a dead connection may fail to close; it is gone either way
            pass

    def check(self) -> None:
        """Connect SSH now (if not connected): a one-line CbmError naming the SSH server when it fails."""
        try:
            self._transport()
        except CbmError:
            raise
        except Exception as exc:  # noqa: BLE001 - paramiko, socket and fabric errors alike: one line
            self.last_error = _reason(exc)
            raise CbmError(f"no SSH connection to {self.where} for the tunnel to "
                           f"{self.remote[0]}:{self.remote[1]}: {self.last_error}") from None

    def _channel(self, origin):
        """A direct-tcpip channel to `remote`; a connection that fails (not the remote refusing) is dropped
        and made once more, so a tunnel whose SSH died works again on this very attempt."""
        for attempt in (1, 2):
            conn, transport = self._transport()
            try:
                return transport.open_channel("direct-tcpip", self.remote, origin, window_size=WINDOW,
                                              timeout=self.timeout)
            except ChannelException:
                raise           # SSH works; the manager could not reach the address (e.g. PostGIS is down)
            except (SSHException, EOFError, OSError):
                with self._lock:
                    self._forget(conn)
                if attempt == 2:
                    raise

    # -- serving clients -----------------------------------------------------------------------
    def _accept(self) -> None:
        while not self.closed:
            try:
                client, origin = self._listener.accept()
            except OSError:
                return          # closed
            threading.Thread(target=self._serve, args=(client, origin), name=f"tunnel-{self.port}-{origin[1]}",
                             daemon=True).start()

    def _serve(self, client: socket.socket, origin) -> None:
        try:
            channel = self._channel(origin)
        except Exception as exc:  # noqa: BLE001 - the client sees its connection closed; the reason is kept
            self.last_error = _reason(exc)
            client.close()
            return
        self.last_error = None
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _pump(client, channel)

    def close(self) -> None:
        """Stop listening and close the SSH connection (its forwarded connections end with it)."""
        if self.closed:
            return
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            self._forget(self._conn)


def _pump(client: socket.socket, channel) -> None:
    """Move bytes both ways until either side ends."""
    try:
        while True:
            ready, _, _ = select.select([client, channel], [], [], 60)
            if client in ready:
                data = client.recv(CHUNK)
                if not data:
                    break
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(CHUNK)
                if not data:
                    break
                client.sendall(data)
            if channel.closed:
                break
    except (OSError, EOFError, SSHException):
        pass
    finally:
        client.close()
        try:
            channel.close()
        except (OSError, EOFError, SSHException):
            pass    # the SSH connection is gone already


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ChannelException):
        return f"the SSH server could not connect to the address ({exc.text or exc.code})"
    if isinstance(exc, BadHostKeyException):
        return ("its host key is not the one pinned in known_hosts (a new server at that address? `cbm up` "
                "forgets the keys of servers it re-creates)")
    return one_line(exc, 200) or type(exc).__name__
