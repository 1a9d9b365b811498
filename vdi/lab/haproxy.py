"""The lab's HAProxy: Debian's haproxy in front of several brokers and gateways, on loopback.

One HTTPS front port; HAProxy terminates TLS (a lab certificate for 127.0.0.1 and localhost it makes
itself), sends `/ws` (the console WebSocket) to the gateways and everything else to the brokers, adds
X-Forwarded-For and X-Forwarded-Proto (so the brokers' `trusted_proxies` must name 127.0.0.1), and checks
each backend's `/healthz` every second. A request that cannot reach a dead broker is sent to the other
one (`retry-on conn-failure`, `option redispatch`); a console tunnel lives as long as the browser and the
gateway keep it (`timeout tunnel`). docs/ha.md explains the choices.

`start()` writes the configuration, checks it with `haproxy -c` and starts HAProxy in the background
(pid file in the state directory); `stop()` stops it; `servers()` reads each backend server's state from
HAProxy's admin socket.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HAPROXY = "/usr/sbin/haproxy"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
# A console is one WebSocket that may stay open for a working day; a browser's TCP keepalive and the
# gateway's own idle policy end dead ones, not HAProxy.
TUNNEL_TIMEOUT = "8h"


class HAProxyError(Exception):
    """HAProxy could not be configured, started or asked; the message says why."""


@dataclass(frozen=True)
class Backend:
    """One server behind HAProxy: a broker or a gateway listening on 127.0.0.1:port."""

    name: str
    port: int


CONFIG = """\
# Written by vdi.lab.haproxy for the lab; docs/ha.md explains every choice.
global
    maxconn 8000
    stats socket {socket} mode 600 level admin
    ssl-default-bind-options ssl-min-ver TLSv1.2
    tune.ssl.cachesize 20000

defaults
    mode http
    option forwardfor
    option redispatch
    retries 3
    retry-on conn-failure empty-response
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 30s
    timeout queue 5s
    timeout tunnel {tunnel_timeout}
    timeout client-fin 5s
    timeout server-fin 5s
    # A crashed server refuses connections at once (retry-on conn-failure sends the request elsewhere);
    # the checks only take it out of rotation. They must not take out a busy one: a slow /healthz under
    # a logon storm is not a dead broker.
    timeout check 5s
    default-server inter 2s fastinter 1s downinter 1s rise 2 fall 3

frontend vdi
    bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
    http-request set-header X-Forwarded-Proto https
    use_backend gateways if {{ path /ws }}
    default_backend brokers

backend brokers
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
{brokers}

backend gateways
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
{gateways}
"""


def _servers(backends: list[Backend]) -> str:
    return "\n".join(f"    server {b.name} 127.0.0.1:{b.port} check" for b in backends)


def render_config(
    port: int, pem: Path, admin_socket: Path, brokers: list[Backend], gateways: list[Backend]
) -> str:
    return CONFIG.format(
        port=port,
        pem=pem,
        socket=admin_socket,
        tunnel_timeout=TUNNEL_TIMEOUT,
        brokers=_servers(brokers),
        gateways=_servers(gateways),
    )


def write_lab_certificate(pem: Path) -> None:
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost, with its key, in one PEM file
    (HAProxy's `crt` format). P-256 keeps the handshakes of a logon storm cheap."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smartwork-vdi lab front")])
    now = dt.datetime.now(dt.UTC)
    alt = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(alt, critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(cert.public_bytes(serialization.Encoding.PEM) + key_pem)


class HAProxy:
    """The lab's HAProxy serving https://127.0.0.1:<port> from `state_dir`."""

    def __init__(self, state_dir: Path, port: int, brokers: list[Backend], gateways: list[Backend]) -> None:
        self.state_dir = Path(state_dir)
        self.port = port
        self.brokers = brokers
        self.gateways = gateways

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pem(self) -> Path:
        return self.state_dir / "front.pem"

    @property
    def config_file(self) -> Path:
        return self.state_dir / "haproxy.cfg"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "haproxy.pid"

    @property
    def admin_socket(self) -> Path:
        return self.state_dir / "haproxy.sock"

    def start(self) -> None:
        """Write the configuration (and a certificate on first use), check it, and start HAProxy."""
        if self.running():
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.pem.exists():
            write_lab_certificate(self.pem)
        self.config_file.write_text(
            render_config(self.port, self.pem, self.admin_socket, self.brokers, self.gateways)
        )
        self._run("-c", "-q")
        self.pid_file.unlink(missing_ok=True)
        self._run("-D", "-p", str(self.pid_file))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if time.monotonic() > deadline:
                raise HAProxyError(f"HAProxy did not come up on 127.0.0.1:{self.port}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Stop HAProxy (its open connections end with it) and wait until it is gone; a no-op if down."""
        pid = self._pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        self.admin_socket.unlink(missing_ok=True)

    def running(self) -> bool:
        pid = self._pid()
        return pid is not None and _alive(pid)

    def servers(self) -> dict[str, str]:
        """ "backend/server" → HAProxy's status of it ("UP", "DOWN", "UP 1/2", …), from the admin socket."""
        states = {}
        for line in self.command("show stat").splitlines():
            fields = line.split(",")
            if line.startswith("#") or len(fields) < 18 or fields[1] in ("FRONTEND", "BACKEND"):
                continue
            states[f"{fields[0]}/{fields[1]}"] = fields[17]
        return states

    def command(self, text: str) -> str:
        """One command on the admin socket (HAProxy's management guide, section 9.3); its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.admin_socket))
            conn.sendall(text.encode() + b"\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def describe(self) -> str:
        if not self.running():
            return f"haproxy: stopped (config {self.config_file})"
        servers = ", ".join(f"{name} {state}" for name, state in sorted(self.servers().items()))
        return f"haproxy: running at {self.url} ({servers})"

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return self.admin_socket.exists()
        return False

    def _pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().split()[0])
        return None

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [HAPROXY, "-f", str(self.config_file), *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            detail = " / ".join((result.stderr or result.stdout).strip().splitlines()[-4:])
            raise HAProxyError(f"haproxy {' '.join(args)} failed ({result.returncode}): {detail}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our own child not yet reaped) is gone for every purpose here.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return False
