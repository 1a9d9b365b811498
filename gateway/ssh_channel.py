"""Desktop displays on remote hosts, reached through the host's sshd (console_access "ssh").

A desktop's VNC server listens on its host's loopback, so the gateway logs in to the host and asks
sshd for a `direct-tcpip` channel (RFC 4254 section 7.2) to it, as `ssh -L` does. One SSH connection
(paramiko Transport) per user@host:port carries every tunnel to that host; it is made again when it
has died and closed once no tunnel has used it for `ssh_idle_close_s`.

The host key must be in `ssh_known_hosts`: an unknown host and a key that differs are both refused,
like OpenSSH's StrictHostKeyChecking=yes, and the log says which host and which fingerprints (never
key material). The gateway authenticates with the private key in `ssh_key_file`.

paramiko blocks, so connecting, authenticating and opening channels run on a small thread pool;
the loop never waits on them. Each channel is bridged to the relay through a socketpair by two
threads, so the relay sees an ordinary IOStream and keeps its backpressure: a thread blocked writing
to a full socketpair stops reading the channel, and paramiko's channel window then stops the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import paramiko
from tornado.iostream import IOStream

from gateway.config import GatewaySettings
from hypervisor.config import SshAddress
from hypervisor.ssh_host import fingerprint, known_hosts_name, prefer_known_key_types
from monitoring.metrics import (
    SSH_CHANNEL_OPENS,
    SSH_HOST_KEY_REFUSALS,
    SSH_TRANSPORTS_OPEN,
    SSH_TRANSPORTS_OPENED,
    HostKeyRefusal,
    SshChannelResult,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

BRIDGE_CHUNK = 65536
MAX_SSH_THREADS = 8
KEEPALIVE_S = 30


class SshRouteError(Exception):
    """The display cannot be reached over SSH. The text names the host and why; it holds no secrets."""

    def __init__(self, result: SshChannelResult, detail: str) -> None:
        super().__init__(detail)
        self.result = result


class _TransportDead(Exception):
    """The reused SSH connection died under us; a new one may still work."""


@dataclass
class HostConnection:
    """One SSH connection to a host and how many tunnels use it now."""

    address: SshAddress
    transport: paramiko.Transport
    channels: int = 0
    idle_since: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.transport.is_active()


class SshChannels:
    """The gateway's SSH connections to hosts, shared by all tunnels of one process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(MAX_SSH_THREADS, thread_name_prefix="vdi-ssh")
        self._connections: dict[SshAddress, HostConnection] = {}
        self._connecting: dict[SshAddress, asyncio.Lock] = {}
        # Bridge threads release channels; the loop reads the counts in the idle sweep.
        self._counts = threading.Lock()
        self._sweeper: asyncio.Task | None = None

    # -- public ----------------------------------------------------------------------------------

    async def open_stream(
        self, address: SshAddress | None, host: str, port: int, host_name: str = ""
    ) -> IOStream:
        """A stream to host:port as the SSH host sees it; SshRouteError says why not."""
        try:
            if address is None:
                raise SshRouteError(
                    SshChannelResult.NOT_CONFIGURED,
                    f"host {host_name or '?'} has console_access ssh but no usable ssh_address",
                )
            self._check_configured()
            connection, channel = await self._open_channel(address, host, port)
        except SshRouteError as exc:
            SSH_CHANNEL_OPENS.labels(result=exc.result.value).inc()
            raise
        SSH_CHANNEL_OPENS.labels(result=SshChannelResult.SUCCESS.value).inc()
        return self._bridge(connection, channel)

    async def close(self) -> None:
        """Close every SSH connection (gateway shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            SSH_TRANSPORTS_OPEN.dec()
            await self._run(self._close_connection, connection, "gateway stopping")
        self._executor.shutdown(wait=False)

    # -- opening ---------------------------------------------------------------------------------

    def _check_configured(self) -> None:
        missing = [
            name for name in ("ssh_key_file", "ssh_known_hosts") if getattr(self.settings, name) is None
        ]
        if missing:
            raise SshRouteError(
                SshChannelResult.NOT_CONFIGURED, f"gateway.{' and gateway.'.join(missing)} not set"
            )

    async def _open_channel(
        self, address: SshAddress, host: str, port: int
    ) -> tuple[HostConnection, paramiko.Channel]:
        self._ensure_sweeper()
        opened = await self._try_channel(address, host, port)
        # A reused connection can die between its last use and now (host rebooted, NAT entry
        # dropped) before paramiko notices; one new connection gets one more try.
        opened = opened or await self._try_channel(address, host, port)
        if opened is None:
            raise SshRouteError(
                SshChannelResult.UNREACHABLE, f"{address}: the SSH connection closed while opening a channel"
            )
        return opened

    async def _try_channel(
        self, address: SshAddress, host: str, port: int
    ) -> tuple[HostConnection, paramiko.Channel] | None:
        """A channel on the (reused or new) connection; None if that connection turned out dead."""
        connection = await self._reserve(address)
        try:
            return connection, await self._run(self._direct_tcpip, connection, host, port)
        except _TransportDead:
            self._release(connection)
            self._forget(connection, "connection lost")
            return None
        except BaseException:
            self._release(connection)
            raise

    async def _reserve(self, address: SshAddress) -> HostConnection:
        """The live connection to the address (made if needed), counted as in use."""
        async with self._connecting.setdefault(address, asyncio.Lock()):
            connection = self._connections.get(address)
            if connection is not None and not connection.alive():
                self._forget(connection, "connection lost")
                connection = None
            if connection is None:
                transport = await self._run(self._connect, address)
                connection = HostConnection(address, transport)
                self._connections[address] = connection
                SSH_TRANSPORTS_OPEN.inc()
                SSH_TRANSPORTS_OPENED.inc()
                log.info("ssh connection to %s open", address)
            with self._counts:
                connection.channels += 1
            return connection

    def _release(self, connection: HostConnection) -> None:
        with self._counts:
            connection.channels -= 1
            connection.idle_since = time.monotonic()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- blocking steps (executor threads) -------------------------------------------------------

    def _connect(self, address: SshAddress) -> paramiko.Transport:
        timeout = self.settings.connect_timeout_s
        known = self._known_keys(address)
        try:
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
        except OSError as exc:
            raise SshRouteError(SshChannelResult.UNREACHABLE, f"{address}: cannot connect: {exc}") from None
        transport = paramiko.Transport(sock)
        try:
            transport.banner_timeout = transport.handshake_timeout = transport.auth_timeout = timeout
            prefer_known_key_types(transport, known)
            try:
                transport.start_client(timeout=timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise SshRouteError(
                    SshChannelResult.UNREACHABLE,
                    f"{address}: SSH handshake failed: {exc or type(exc).__name__}",
                ) from None
            self._check_host_key(address, transport.get_remote_server_key(), known)
            self._authenticate(address, transport)
            # A host that vanished without a FIN is noticed, and the next tunnel reconnects.
            transport.set_keepalive(KEEPALIVE_S)
        except BaseException:
            transport.close()
            raise
        return transport

    def _known_keys(self, address: SshAddress) -> dict[str, paramiko.PKey]:
        # Read at every new connection, so an edited known_hosts takes effect without a restart.
        path = self.settings.ssh_known_hosts
        try:
            host_keys = paramiko.HostKeys(str(path))
        except (OSError, paramiko.SSHException, ValueError) as exc:
            raise SshRouteError(
                SshChannelResult.NOT_CONFIGURED, f"cannot read gateway.ssh_known_hosts {path}: {exc}"
            ) from None
        entry = host_keys.lookup(known_hosts_name(address))
        return dict(entry) if entry else {}

    def _check_host_key(
        self, address: SshAddress, presented: paramiko.PKey, known: dict[str, paramiko.PKey]
    ) -> None:
        name, path = known_hosts_name(address), self.settings.ssh_known_hosts
        shown = f"{presented.get_name()} {fingerprint(presented)}"
        if not known:
            SSH_HOST_KEY_REFUSALS.labels(reason=HostKeyRefusal.UNKNOWN.value).inc()
            raise SshRouteError(
                SshChannelResult.HOST_KEY_UNKNOWN,
                f"host key of {name} is unknown: no entry in {path}; presented {shown}",
            )
        expected = known.get(presented.get_name())
        if expected is None or expected != presented:
            reference = expected or next(iter(known.values()))
            SSH_HOST_KEY_REFUSALS.labels(reason=HostKeyRefusal.MISMATCH.value).inc()
            raise SshRouteError(
                SshChannelResult.HOST_KEY_MISMATCH,
                f"host key of {name} does not match {path}: expected {reference.get_name()} "
                f"{fingerprint(reference)}, presented {shown}",
            )

    def _authenticate(self, address: SshAddress, transport: paramiko.Transport) -> None:
        key = self._private_key()
        try:
            transport.auth_publickey(address.user, key)
        except paramiko.AuthenticationException:
            raise SshRouteError(
                SshChannelResult.AUTH_FAILED,
                f"{address}: public key authentication as {address.user} refused "
                f"(gateway key {key.get_name()} {fingerprint(key)})",
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise SshRouteError(
                SshChannelResult.UNREACHABLE, f"{address}: authentication failed: {exc}"
            ) from None
        if not transport.is_authenticated():
            raise SshRouteError(
                SshChannelResult.AUTH_FAILED, f"{address}: the host asks for more than a public key"
            )

    def _private_key(self) -> paramiko.PKey:
        path = self.settings.ssh_key_file
        try:
            return paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            raise SshRouteError(
                SshChannelResult.NOT_CONFIGURED,
                f"gateway.ssh_key_file {path} is encrypted; use a key without passphrase",
            ) from None
        except (OSError, paramiko.SSHException, ValueError) as exc:
            # paramiko's messages name the file and the problem, never the key's contents.
            raise SshRouteError(
                SshChannelResult.NOT_CONFIGURED, f"cannot read gateway.ssh_key_file {path}: {exc}"
            ) from None

    def _direct_tcpip(self, connection: HostConnection, host: str, port: int) -> paramiko.Channel:
        transport = connection.transport
        try:
            return transport.open_channel(
                "direct-tcpip",
                dest_addr=(host, port),
                src_addr=("127.0.0.1", 0),
                timeout=self.settings.connect_timeout_s,
            )
        except paramiko.ChannelException as exc:
            raise SshRouteError(
                SshChannelResult.CHANNEL_REFUSED,
                f"{connection.address}: the host would not open a channel to {host}:{port}: {exc.text}",
            ) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not transport.is_active():
                raise _TransportDead() from None
            raise SshRouteError(
                SshChannelResult.UNREACHABLE, f"{connection.address}: no channel to {host}:{port}: {exc}"
            ) from None

    @staticmethod
    def _close_connection(connection: HostConnection, why: str) -> None:
        connection.transport.close()
        log.info("ssh connection to %s closed: %s", connection.address, why)

    # -- bridging and idling ---------------------------------------------------------------------

    def _bridge(self, connection: HostConnection, channel: paramiko.Channel) -> IOStream:
        ours, theirs = socket.socketpair()
        ChannelBridge(channel, theirs, on_done=lambda: self._release(connection)).start()
        return IOStream(ours)

    def _forget(self, connection: HostConnection, why: str) -> None:
        """Drop the connection from the pool and close it off the loop."""
        if self._connections.get(connection.address) is connection:
            del self._connections[connection.address]
            SSH_TRANSPORTS_OPEN.dec()
            try:
                self._executor.submit(self._close_connection, connection, why)
            except RuntimeError:  # the pool is shut down: the gateway is stopping
                self._close_connection(connection, why)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        idle_s = self.settings.ssh_idle_close_s
        interval = min(max(idle_s / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self._connections.values()):
                with self._counts:
                    idle = connection.channels == 0 and now - connection.idle_since >= idle_s
                if not connection.alive():
                    self._forget(connection, "connection lost")
                elif idle:
                    self._forget(connection, f"no tunnel for {idle_s:g} s")


class ChannelBridge:
    """Copies bytes between an SSH channel and one end of a socketpair, one thread per direction.

    Either side ending ends both: the channel is closed and the socket shut down, which wakes the
    other thread; the socket itself is closed by the last thread out, never under a blocked call.
    """

    def __init__(self, channel: paramiko.Channel, sock: socket.socket, on_done: Callable[[], None]) -> None:
        self.channel, self.sock, self.on_done = channel, sock, on_done
        self._lock = threading.Lock()
        self._ending = False
        self._running = 2

    def start(self) -> None:
        for name, read, write in (
            ("vdi-ssh-from-host", self.channel.recv, self.sock.sendall),
            ("vdi-ssh-to-host", self.sock.recv, self.channel.sendall),
        ):
            threading.Thread(target=self._pump, args=(read, write), name=name, daemon=True).start()

    def _pump(self, read: Callable[[int], bytes], write: Callable[[bytes], object]) -> None:
        try:
            while data := read(BRIDGE_CHUNK):
                write(data)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self._end()

    def _end(self) -> None:
        with self._lock:
            first, self._ending = not self._ending, True
            self._running -= 1
            last = self._running == 0
        if first:
            # The transport may be gone already (gateway closing): the socket must still be shut down,
            # or the other thread waits on it for ever.
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self.channel.close()
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        if last:
            self.sock.close()
            self.on_done()
