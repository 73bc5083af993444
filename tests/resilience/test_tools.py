"""The TCP proxy the fault matrix relies on (the load generator's tests are in tests/bench/)."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.resilience.harness import TcpProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(1024):
            self.request.sendall(data)


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _echo_through(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        return sock.recv(16)


def test_proxy_forwards_refuses_while_down_and_recovers(echo_server: int) -> None:
    proxy = TcpProxy(upstream_host="127.0.0.1", upstream_port=echo_server).start()
    try:
        assert _echo_through(proxy.port) == b"ping"
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(b"a")
        assert held.recv(16) == b"a"
        proxy.down()
        try:
            leftover = held.recv(16)
        except ConnectionResetError:
            leftover = b""
        assert leftover == b"", "an open connection survived the outage"
        held.close()
        with pytest.raises(ConnectionRefusedError):
            _echo_through(proxy.port)
        proxy.up()
        assert _echo_through(proxy.port) == b"ping"
    finally:
        proxy.close()
