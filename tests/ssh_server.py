"""A real SSH server on 127.0.0.1 for the tests of the database tunnel (paramiko's server side): it lets
one public key in and forwards direct-tcpip channels (`ssh -L`), like the manager's sshd.

    with SshServer(authorized_key_line) as server:     # server.port, server.host_key
        ...                                              # server.stop() / server.start() on the same port
"""

from __future__ import annotations

import select
import socket
import threading

import paramiko


class _Server(paramiko.ServerInterface):
    def __init__(self, key_base64: str, owner: "SshServer"):
        self.key_base64 = key_base64
        self.owner = owner

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        return paramiko.AUTH_SUCCESSFUL if key.get_base64() == self.key_base64 else paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid, origin, destination):
        self.owner.destinations[chanid] = destination
        return paramiko.OPEN_SUCCEEDED


class SshServer:
    def __init__(self, authorized_key: str, host_key: paramiko.PKey | None = None, port: int = 0):
        self.key_base64 = authorized_key.split()[1]
        self.host_key = host_key or paramiko.ECDSAKey.generate(bits=256)
        self.port = port
        self.destinations: dict[int, tuple[str, int]] = {}
        self.forwarded = 0          # channels forwarded so far
        self._listener = None
        self._transports: list[paramiko.Transport] = []

    @property
    def known_hosts_key(self) -> str:
        return f"{self.host_key.get_name()} {self.host_key.get_base64()}"

    def start(self) -> "SshServer":
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every SSH connection (a rebooted manager)."""
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        for t in self._transports:
            t.close()
        self._transports.clear()

    def __enter__(self) -> "SshServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _accept(self, listener) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.host_key)
            self._transports.append(transport)
            try:
                transport.start_server(server=_Server(self.key_base64, self))
            except (paramiko.SSHException, EOFError, OSError):
                continue
            threading.Thread(target=self._channels, args=(transport,), daemon=True).start()

    def _channels(self, transport) -> None:
        while transport.is_active():
            channel = transport.accept(timeout=1)
            if channel is None:
                continue
            destination = self.destinations.pop(channel.get_id(), None)
            try:
                upstream = socket.create_connection(destination, timeout=10)
            except OSError:
                channel.close()
                continue
            self.forwarded += 1
            threading.Thread(target=_pump, args=(channel, upstream), daemon=True).start()


def _pump(channel, upstream) -> None:
    try:
        while True:
            ready, _, _ = select.select([channel, upstream], [], [], 60)
            if channel in ready:
                data = channel.recv(65536)
                if not data:
                    break
                upstream.sendall(data)
            if upstream in ready:
                data = upstream.recv(65536)
                if not data:
                    break
                channel.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        channel.close()
        upstream.close()
