"""The lab's HAProxy (vdi/lab/haproxy.py) in front of two real HTTP servers: TLS at the front, /healthz
checks that take a dead server out, requests that go on through the other, forwarded headers, and
nothing left running after stop()."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures.common import free_port, wait_until
from vdi.lab.haproxy import Backend, HAProxy


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {
                "server": self.server.name,
                "path": self.path,
                "forwarded_for": self.headers.get("X-Forwarded-For"),
                "forwarded_proto": self.headers.get("X-Forwarded-Proto"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def serve(name: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Echo)
    server.name = name
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def two_servers():
    servers = [serve("b1"), serve("b2"), serve("g1")]
    yield servers
    for server in servers:
        server.shutdown()
        server.server_close()


def get(proxy: HAProxy, path: str) -> dict:
    context = ssl.create_default_context(cafile=str(proxy.pem))
    with urllib.request.urlopen(f"{proxy.url}{path}", context=context, timeout=10) as response:
        return json.loads(response.read())


def test_haproxy_terminates_tls_routes_checks_and_fails_over(tmp_path, two_servers):
    b1, b2, g1 = two_servers
    proxy = HAProxy(
        tmp_path / "haproxy",
        free_port(),
        [Backend("b1", b1.server_address[1]), Backend("b2", b2.server_address[1])],
        [Backend("g1", g1.server_address[1])],
    )
    proxy.start()
    try:
        wait_until(lambda: set(proxy.servers().values()) == {"UP"}, 30, "every server checked UP")
        assert {get(proxy, "/api")["server"] for _ in range(4)} == {"b1", "b2"}  # round robin
        console = get(proxy, "/ws")
        assert console["server"] == "g1"
        # The brokers trust these because the lab's brokers list 127.0.0.1 in trusted_proxies.
        assert (console["forwarded_for"], console["forwarded_proto"]) == ("127.0.0.1", "https")

        b1.shutdown()
        b1.server_close()  # connections to it are refused now, as to a SIGKILLed broker
        assert all(get(proxy, "/api")["server"] == "b2" for _ in range(6))  # retried on b2 at once
        wait_until(lambda: proxy.servers()["brokers/b1"].startswith("DOWN"), 30, "b1 checked DOWN")
        assert "brokers/b1 DOWN" in proxy.describe()
    finally:
        proxy.stop()
    assert not proxy.running()
    assert not proxy.pid_file.exists()
