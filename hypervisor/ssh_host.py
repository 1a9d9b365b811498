"""One SSH connection to a host, for running commands on it: key login, host key checked, reused.

Host keys are checked like OpenSSH's StrictHostKeyChecking=yes (and like the gateway's SSH channels): a
host missing from known_hosts and a host whose key differs are refused, nothing is ever added. Commands
are argument lists joined with shlex.join, so the remote shell sees each argument as one word; secrets go
on standard input, never into the command line (which `ps` on the host shows).

paramiko blocks; callers (providers) run in the broker's executor.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import paramiko

from hypervisor.base import HostUnreachable, HypervisorError
from hypervisor.config import SshAddress

KEEPALIVE_S = 10
CONNECT_TIMEOUT_S = 5.0
# Our commands answer in well under a second; a host that stays silent this long is taken for gone.
COMMAND_TIMEOUT_S = 10.0
# A host that vanishes without a FIN or RST (network cut, powered off) must end the connection within
# seconds, as libvirt's keepalive does for hypervisor hosts, so the monitor marks it down in time (30 s):
# TCP keepalive probes after 5 s of silence, every 2 s, 3 unanswered close it; data unacknowledged for 10 s too.
TCP_OPTIONS = (
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5),
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 2),
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 10_000),
)
# OpenSSH stores RSA keys as ssh-rsa; the SHA-2 signature names (RFC 8332) select the same key.
_KEY_TYPE_ALIASES = {"ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]}


def fingerprint(key: paramiko.PKey) -> str:
    """The key's SHA256 fingerprint as OpenSSH prints it (`ssh-keygen -l`)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_name(address: SshAddress) -> str:
    """The name a host has in known_hosts: `host` on port 22, `[host]:port` on any other."""
    return address.host if address.port == 22 else f"[{address.host}]:{address.port}"


def prefer_known_key_types(transport: paramiko.Transport, known: dict[str, paramiko.PKey]) -> None:
    """Ask the host first for the key types known_hosts holds for it.

    Otherwise the host may present a key type known_hosts has no entry for, and a host with a perfectly
    good ed25519 entry would be refused for its ECDSA key.
    """
    options = transport.get_security_options()
    wanted = [alias for name in known for alias in _KEY_TYPE_ALIASES.get(name, [name])]
    first = [name for name in wanted if name in options.key_types]
    options.key_types = first + [name for name in options.key_types if name not in first]


class ChannelRefused(HypervisorError):
    """sshd would not open the channel: nothing listens there, or the account may not forward there."""


@dataclass(frozen=True)
class CommandResult:
    status: int
    stdout: str
    stderr: str


class SshHost:
    """Commands on one host over one reused SSH connection (made again when it died)."""

    def __init__(self, host_name: str, address: SshAddress, key_file: Path, known_hosts: Path) -> None:
        self.host_name, self.address = host_name, address
        self.key_file, self.known_hosts = key_file, known_hosts
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()

    def run(
        self, argv: Sequence[str], stdin: bytes = b"", timeout: float = COMMAND_TIMEOUT_S, suffix: str = ""
    ) -> CommandResult:
        """Run argv on the host; `suffix` is fixed shell text (redirections) appended to the joined argv."""
        command = shlex.join(argv) + suffix
        channel = self._session()
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            stdout = channel.makefile("rb").read()
            stderr = channel.makefile_stderr("rb").read()
            status = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            why = str(exc) or type(exc).__name__  # a timeout's text is empty
            raise HostUnreachable(
                self.host_name, f"lost the SSH connection to {self.address}: {why}"
            ) from None
        finally:
            channel.close()
        return CommandResult(status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def open_channel(self, host: str, port: int, timeout: float = CONNECT_TIMEOUT_S) -> paramiko.Channel:
        """A direct-tcpip channel to host:port as the host sees it (its loopback displays)."""
        try:
            return self.transport().open_channel(
                "direct-tcpip", dest_addr=(host, port), src_addr=("127.0.0.1", 0), timeout=timeout
            )
        except paramiko.ChannelException as exc:
            raise ChannelRefused(self.host_name, f"no channel to {host}:{port}: {exc.text}") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise HostUnreachable(
                self.host_name, f"lost the SSH connection to {self.address}: {exc}"
            ) from None

    def transport(self) -> paramiko.Transport:
        with self._lock:
            if self._transport is not None and not self._transport.is_active():
                self._transport.close()
                self._transport = None
            if self._transport is None:
                self._transport = self._connect()
            return self._transport

    def close(self) -> None:
        with self._lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def _session(self) -> paramiko.Channel:
        try:
            return self.transport().open_session(timeout=CONNECT_TIMEOUT_S)
        except (OSError, EOFError, paramiko.SSHException):
            # A reused connection can die between its last use and now; one new connection gets a try.
            self.close()
        try:
            return self.transport().open_session(timeout=CONNECT_TIMEOUT_S)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise HostUnreachable(self.host_name, f"no SSH session on {self.address}: {exc}") from None

    # -- connecting ------------------------------------------------------------------------------

    def _connect(self) -> paramiko.Transport:
        known = self._known_keys()
        try:
            sock = socket.create_connection((self.address.host, self.address.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise HostUnreachable(self.host_name, f"cannot connect to {self.address}: {exc}") from None
        for level, option, value in TCP_OPTIONS:
            sock.setsockopt(level, option, value)
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = (
                CONNECT_TIMEOUT_S
            )
            prefer_known_key_types(transport, known)
            try:
                transport.start_client(timeout=CONNECT_TIMEOUT_S)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise HostUnreachable(
                    self.host_name, f"SSH handshake with {self.address} failed: {exc or type(exc).__name__}"
                ) from None
            self._check_host_key(transport.get_remote_server_key(), known)
            self._authenticate(transport)
            transport.set_keepalive(KEEPALIVE_S)
        except BaseException:
            transport.close()
            raise
        return transport

    def _known_keys(self) -> dict[str, paramiko.PKey]:
        try:
            host_keys = paramiko.HostKeys(str(self.known_hosts))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise HypervisorError(
                self.host_name, f"cannot read known_hosts {self.known_hosts}: {exc}"
            ) from None
        entry = host_keys.lookup(known_hosts_name(self.address))
        return dict(entry) if entry else {}

    def _check_host_key(self, presented: paramiko.PKey, known: dict[str, paramiko.PKey]) -> None:
        name, shown = known_hosts_name(self.address), f"{presented.get_name()} {fingerprint(presented)}"
        if not known:
            raise HostUnreachable(
                self.host_name,
                f"host key of {name} is unknown: no entry in {self.known_hosts}; presented {shown}",
            )
        expected = known.get(presented.get_name())
        if expected is None or expected != presented:
            reference = expected or next(iter(known.values()))
            raise HostUnreachable(
                self.host_name,
                f"host key of {name} does not match {self.known_hosts}: expected {reference.get_name()} "
                f"{fingerprint(reference)}, presented {shown}",
            )

    def _authenticate(self, transport: paramiko.Transport) -> None:
        try:
            key = paramiko.PKey.from_path(self.key_file)
        except (OSError, paramiko.SSHException, ValueError) as exc:
            # paramiko's messages name the file and the problem, never the key's contents.
            raise HypervisorError(self.host_name, f"cannot read SSH key {self.key_file}: {exc}") from None
        try:
            transport.auth_publickey(self.address.user, key)
        except paramiko.AuthenticationException:
            raise HostUnreachable(
                self.host_name,
                f"{self.address}: public key login as {self.address.user} refused "
                f"(key {key.get_name()} {fingerprint(key)})",
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HostUnreachable(self.host_name, f"{self.address}: login failed: {exc}") from None
        if not transport.is_authenticated():
            raise HostUnreachable(self.host_name, f"{self.address}: the host asks for more than a public key")
