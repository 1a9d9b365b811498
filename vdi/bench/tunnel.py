"""Console tunnel speed: `vdi bench tunnel [--mb 256] [--tunnels 2000] [--idle 1000]`, JSON out.

Everything runs on loopback and stops by itself. A fake desktop (its own process: an RFB 3.8 server that
asks for VNC authentication, as every desktop does once the broker gives it a password) serves four kinds
of connection on four ports: `down` streams FramebufferUpdates of raw pixels, `up` takes client messages
and rings the Bell after each MiB, `rtt` answers each PointerEvent with a Bell, `idle` just holds the
connection. The same client code measures three paths to it:

- `raw`: TCP straight to the desktop (the client logs in with the password itself): 100 %;
- `gateway`: `vdi gateway` as its own process, with a console token per tunnel from a SQLite database the
  bench fills, the password sealed in the desktop's row and injected by the gateway, the clipboard policy
  on: the browser side speaks WebSocket with masked frames, as browsers do, and gets security type None;
- `websockify`: stock websockify with the project's token plugin (byte relay; the client logs in itself,
  since websockify cannot inject a password);
- `haproxy-tcp`: Debian's HAProxy in TCP mode, one thread, a plain byte relay in C with no WebSocket, no token
  and no RFB framing (the client logs in itself): what one extra hop costs on this machine whatever the
  relay does, the ceiling any relay can reach here.

Figures: server→browser and browser→server MB/s (upload as ClientCutText messages, which the gateway
reads whole and puts through the clipboard policy), 6-byte round trip p50/p99 (µs), new tunnels per second
with token check up to ServerInit and their p99 (`--concurrency` at once, and one at a time), and KB of the
relay process's memory per idle tunnel. Failed tunnels are counted with their reasons.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tornado.util import _websocket_mask
from tornado.websocket import WebSocketClientConnection

from broker.db import Database
from broker.db.config import DatabaseSettings
from broker.db.migrate import upgrade
from broker.db.models import Desktop, DesktopSession, Host, Pool, User
from broker.db.tokens import ConsolePolicy, issue_token
from broker.db.vnc_passwords import VncPasswordBox
from gateway.app import raise_open_files_limit
from gateway.rfb import vnc_auth_response
from vdi.bench import read_frame, tree_cpu_s, websocket_upgrade
from vdi.lab.haproxy import HAPROXY

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "bench123"  # noqa: S105 - the fake desktop's, on loopback, for the length of a run
KEY = "tunnel-bench-key-0123456789abcdef"
ORIGIN = "http://127.0.0.1:8080"
MODES = ("down", "up", "rtt", "idle")
# The clients' stream buffers (raw and WebSocket alike): large enough that a 1 MiB frame is read without
# the stream pausing and resuming its socket on the way.
STREAM_LIMIT = 4 * 1024 * 1024
# 256 x 256 pixels, 32 bits each: one FramebufferUpdate of one raw rectangle, sent back to back.
RECT = 256
FRAME = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, RECT, RECT, 0) + b"\x5a" * (RECT * RECT * 4)
SERVER_INIT = (
    struct.pack(">HH", 1920, 1080)
    + struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    + struct.pack(">I", 5)
    + b"bench"
)
BELL = b"\x02"
MIB = 1 << 20
CUT_TEXT = 60_000  # bytes of text per ClientCutText of the upload
POINTER = b"\x05\x00\x01\x00\x01\x00"


class BenchError(Exception):
    pass


# -- the fake desktop, in its own process ------------------------------------------------------------


async def _desktop_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"RFB 003.008\n")
    await reader.readexactly(12)
    writer.write(b"\x01\x02")  # one security type: VNC authentication
    await reader.readexactly(1)
    challenge = os.urandom(16)
    writer.write(challenge)
    if await reader.readexactly(16) != vnc_auth_response(PASSWORD, challenge):
        writer.write(struct.pack(">I", 1))
        raise BenchError("the fake desktop got a wrong password")
    writer.write(struct.pack(">I", 0))
    await reader.readexactly(1)  # ClientInit
    writer.write(SERVER_INIT)
    await writer.drain()


async def _serve_mode(mode: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    if mode == "down":
        frame = memoryview(FRAME)
        while True:
            writer.write(frame)
            await writer.drain()
    elif mode == "up":
        received = 0
        while chunk := await reader.read(MIB):
            before, received = received // MIB, received + len(chunk)
            writer.write(BELL * (received // MIB - before))
    elif mode == "rtt":
        while True:
            await reader.readexactly(len(POINTER))
            writer.write(BELL)
    else:
        await reader.read()


def more_files() -> None:
    """65536 open files (past the hard limit when privileged): thousands of tunnels need two each."""
    raise_open_files_limit(65536)


def _desktop_process(ports: multiprocessing.Queue) -> None:
    more_files()

    async def main() -> None:
        async def handler(mode: str, reader, writer) -> None:
            try:
                await _desktop_handshake(reader, writer)
                await _serve_mode(mode, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, BenchError):
                pass
            finally:
                writer.close()

        servers = {}
        for mode in MODES:
            servers[mode] = await asyncio.start_server(
                lambda r, w, mode=mode: handler(mode, r, w), "127.0.0.1", 0, backlog=4096
            )
        ports.put({mode: server.sockets[0].getsockname()[1] for mode, server in servers.items()})
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the client's two transports ------------------------------------------------------------------------


class Transport:
    """What the measurements need of a connection: read some bytes, send some, close."""

    async def recv(self) -> bytes: ...

    async def send(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class TcpTransport(Transport):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def recv(self) -> bytes:
        data = await self.reader.read(MIB)
        if not data:
            raise BenchError("the desktop closed the connection")
        return data

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class WsTransport(Transport):
    def __init__(self, conn: WebSocketClientConnection) -> None:
        self.conn = conn

    async def recv(self) -> bytes:
        while True:
            message = await self.conn.read_message()
            if message is None:
                raise BenchError(
                    f"the relay closed the tunnel: {self.conn.close_code} {self.conn.close_reason}"
                )
            if isinstance(message, bytes):
                return message

    async def send(self, data: bytes) -> None:
        await self.conn.write_message(data, binary=True)  # masked, as a browser's frames are

    def close(self) -> None:
        self.conn.close()


class LeanWsTransport(Transport):
    """A browser's side of a WebSocket as lean as the raw path's client: asyncio streams, frames parsed
    from whatever one read brings, masked sends through Tornado's C mask. A browser's WebSocket is native
    code; timing a Python WebSocket library's per-message steps (Tornado's client costs tens of µs per
    message) would charge the relay with the client's work."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str) -> LeanWsTransport:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=STREAM_LIMIT)
        writer.transport.set_write_buffer_limits(high=4 * MIB)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(websocket_upgrade(parts, ORIGIN))
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            writer.close()
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            raise BenchError(f"the relay refused the upgrade: {status}")
        return cls(reader, writer)

    async def recv(self) -> bytes:
        """The next binary frame's payload: the header read first, then exactly the payload, one copy out
        of the stream's buffer as the raw path's read makes (a close frame raises)."""
        try:
            while True:
                opcode, payload = await read_frame(self.reader)
                if opcode == 0x8:
                    code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                    reason = payload[2:].decode(errors="replace")
                    raise BenchError(f"the relay closed the tunnel: {code} {reason}")
                if opcode in (0x0, 0x2):
                    return payload
        except asyncio.IncompleteReadError:
            raise BenchError("the relay closed the connection") from None

    async def send(self, data: bytes) -> None:
        mask = os.urandom(4)
        size = len(data)
        if size < 126:
            header = struct.pack(">BB", 0x82, 0x80 | size)
        elif size <= 0xFFFF:
            header = struct.pack(">BBH", 0x82, 0x80 | 126, size)
        else:
            header = struct.pack(">BBQ", 0x82, 0x80 | 127, size)
        self.writer.writelines([header, mask, _websocket_mask(mask, data)])
        if self.writer.transport.get_write_buffer_size() > 4 * MIB:
            await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class Reader:
    """Exact reads over a transport that hands out chunks."""

    def __init__(self, transport: Transport) -> None:
        self.transport, self.buffer = transport, bytearray()

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += await self.transport.recv()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


async def client_handshake(transport: Transport, *, log_in: bool) -> Reader:
    """The browser's side of RFB 3.8 up to ServerInit: VNC authentication itself, or type None."""
    reader = Reader(transport)
    await reader.exactly(12)
    await transport.send(b"RFB 003.008\n")
    count = (await reader.exactly(1))[0]
    types = await reader.exactly(count)
    if log_in:
        if 2 not in types:
            raise BenchError(f"expected VNC authentication, got types {list(types)}")
        await transport.send(b"\x02")
        await transport.send(vnc_auth_response(PASSWORD, await reader.exactly(16)))
    else:
        if 1 not in types:
            raise BenchError(f"expected security type None, got types {list(types)}")
        await transport.send(b"\x01")
    if await reader.exactly(4) != b"\x00\x00\x00\x00":
        raise BenchError("security handshake refused")
    await transport.send(b"\x01")  # ClientInit: shared
    header = await reader.exactly(24)
    await reader.exactly(struct.unpack(">I", header[20:24])[0])
    return reader


# -- the three paths -------------------------------------------------------------------------------------


@dataclass
class Route:
    name: str
    ws_url: str | None  # None: raw TCP
    log_in: bool  # the client itself logs in to the desktop (raw, websockify, haproxy-tcp)
    tokens: TokenSource | None = None
    ports: dict[str, int] | None = None  # TCP paths: the port per mode, when not the desktop's own


class TokenSource:
    """Console tokens from the bench's database, one per tunnel, issued ahead of the clock."""

    def __init__(
        self, db: Database, sessions: dict[str, tuple[str, int, int]], policy: ConsolePolicy | None = None
    ) -> None:
        self.db, self.sessions, self.policy = db, sessions, policy or ConsolePolicy()

    def issue(self, mode: str, count: int) -> list[str]:
        """`count` tokens to the mode's desktop, each for a session of its own (the gateway caps tunnels
        per session), issued as the broker issues them."""
        _, desktop_id, port = self.sessions[mode]
        tokens = []
        with self.db.transaction() as s:
            for _ in range(count):
                session_id = str(uuid.uuid4())
                s.add(DesktopSession(id=session_id, username="bench", desktop_id=desktop_id))
                s.flush()
                tokens.append(
                    issue_token(
                        s,
                        session_id=session_id,
                        desktop_id=desktop_id,
                        host="127.0.0.1",
                        port=port,
                        ttl_s=300,
                        route="direct",
                        policy=self.policy,
                    )
                )
        return tokens


async def open_tunnel(path: Route, ports: dict[str, int], mode: str, token: str | None = None) -> Reader:
    if path.ws_url is None:
        port = (path.ports or ports)[mode]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=STREAM_LIMIT)
        writer.transport.set_write_buffer_limits(high=4 * MIB)
        return await client_handshake(TcpTransport(reader, writer), log_in=True)
    transport = await LeanWsTransport.connect(f"{path.ws_url}?token={token}")
    return await client_handshake(transport, log_in=path.log_in)


# -- measurements ---------------------------------------------------------------------------------------


async def download(path: Route, ports, token, megabytes: int) -> float:
    reader = await open_tunnel(path, ports, "down", token)
    wanted, got = megabytes * MIB, len(reader.buffer)
    started = time.perf_counter()
    while got < wanted:
        got += len(await reader.transport.recv())
    elapsed = time.perf_counter() - started
    reader.transport.close()
    return got / MIB / elapsed


async def upload(path: Route, ports, token, megabytes: int) -> float:
    reader = await open_tunnel(path, ports, "up", token)
    message = struct.pack(">B3xi", 6, CUT_TEXT) + b"a" * CUT_TEXT
    batch = message * 16  # about 1 MB per write: a browser pasting, as fast as the relay takes it
    bells_wanted = megabytes
    sent = 0
    started = time.perf_counter()
    while sent < megabytes * MIB:
        await reader.transport.send(batch)
        sent += len(batch)
    await reader.exactly(bells_wanted)
    elapsed = time.perf_counter() - started
    reader.transport.close()
    return sent / MIB / elapsed


async def round_trips(path: Route, ports, token, count: int) -> dict:
    reader = await open_tunnel(path, ports, "rtt", token)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await reader.transport.send(POINTER)
        await reader.exactly(1)
        samples.append((time.perf_counter() - started) * 1e6)
    reader.transport.close()
    return _percentiles(samples, "us")


def _failure(failures: Counter, exc: Exception) -> None:
    """Count a failed tunnel by what went wrong (the JSON says why, not only how many)."""
    failures[f"{type(exc).__name__}: {exc}"[:120]] += 1


async def new_tunnels(path: Route, ports, tokens: list[str | None], concurrency: int) -> dict:
    semaphore = asyncio.Semaphore(concurrency)
    samples: list[float] = []
    failures: Counter = Counter()

    async def one(token: str | None) -> None:
        async with semaphore:
            started = time.perf_counter()
            try:
                reader = await open_tunnel(path, ports, "idle", token)
            except Exception as exc:
                _failure(failures, exc)
                return
            samples.append((time.perf_counter() - started) * 1000)
            reader.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(token) for token in tokens))
    elapsed = time.perf_counter() - started
    return {
        "per_second": round(len(samples) / elapsed, 1),
        "failures": sum(failures.values()),
        **_percentiles(samples, "ms"),
        **({"failure_reasons": dict(failures.most_common(5))} if failures else {}),
    }


async def idle_tunnels(path: Route, ports, tokens: list[str | None], pid: int | None) -> dict:
    """Memory of the relay process per idle tunnel: its RSS with the tunnels open, less before."""
    before = _rss_kib(pid) if pid else None
    readers = []
    failures: Counter = Counter()
    semaphore = asyncio.Semaphore(100)

    async def one(token: str | None) -> None:
        async with semaphore:
            try:
                readers.append(await open_tunnel(path, ports, "idle", token))
            except Exception as exc:
                _failure(failures, exc)

    await asyncio.gather(*(one(token) for token in tokens))
    after = _rss_kib(pid) if pid else None
    for reader in readers:
        reader.transport.close()
    result: dict = {"open": len(readers), "failures": sum(failures.values())}
    if failures:
        result["failure_reasons"] = dict(failures.most_common(5))
    if before is not None and after is not None and readers:
        result["kb_per_tunnel"] = round((after - before) / len(readers), 1)
    return result


def _percentiles(samples: list[float], unit: str) -> dict:
    if not samples:
        return {f"p50_{unit}": None, f"p99_{unit}": None}
    ordered = sorted(samples)
    return {
        f"p50_{unit}": round(statistics.median(ordered), 1),
        f"p99_{unit}": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


# -- set-up: database, gateway, websockify --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _seed(db: Database, ports: dict[str, int], sealed: bool) -> dict[str, tuple[str, int, int]]:
    box = VncPasswordBox(KEY)
    sessions = {}
    with db.transaction() as s:
        if s.get(User, "bench") is None:
            s.add(User(username="bench", display_name="Bench", groups=["bench"]))
            s.add(Pool(name="bench", display_name="Bench", image="demo", groups=["bench"]))
            s.add(Host(name="bench", uri="qemu:///system", console_access="direct"))
            s.flush()
        for mode in MODES:
            name = f"bench-{mode}-{'sealed' if sealed else 'open'}-{uuid.uuid4().hex[:6]}"
            desktop = Desktop(
                pool_name="bench",
                host_name="bench",
                domain_name=name,
                image="demo",
                state="running",
                vnc_host="127.0.0.1",
                vnc_port=ports[mode],
                vnc_password_sealed=box.seal(name, PASSWORD) if sealed else None,
            )
            s.add(desktop)
            s.flush()
            session_id = str(uuid.uuid4())
            s.add(DesktopSession(id=session_id, username="bench", desktop_id=desktop.id))
            sessions[mode] = (session_id, desktop.id, ports[mode])
    return sessions


def _gateway_config(path: Path, database: Path, port: int, extra: str = "") -> Path:
    path.write_text(
        f'[database]\nurl = "sqlite:///{database}"\npool_size = 20\n\n'
        f'[gateway]\nport = {port}\nallowed_origins = ["{ORIGIN}"]\nvnc_password_key = "{KEY}"\n{extra}'
    )
    return path


def _haproxy_config(path: Path, desktop_ports: dict[str, int], relay_ports: dict[str, int]) -> Path:
    """HAProxy as a bare TCP relay, one thread (as the gateway has one event loop), a listener per mode;
    9,000 connections at most (two files each: it must fit under the hard limit of open files)."""
    listens = "".join(
        f"listen {mode}\n  bind 127.0.0.1:{relay_ports[mode]}\n  server desktop 127.0.0.1:{desktop_ports[mode]}\n"
        for mode in MODES
    )
    path.write_text(
        "global\n  nbthread 1\n  maxconn 9000\n\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n\n" + listens
    )
    return path


def _start(argv: list[str], log: Path, port: int) -> subprocess.Popen:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=more_files)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{argv[0]} exited: {log.read_text(errors='replace')[-400:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.1)
    process.kill()
    raise BenchError(f"{argv[0]} did not listen on {port} within 30 s")


def _stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def measure(path: Route, ports, args, pid: int | None) -> dict:
    def tokens(mode: str, count: int) -> list[str | None]:
        return path.tokens.issue(mode, count) if path.tokens else [None] * count

    # The relay's CPU for each kind of work (seconds of its process, user and system): a figure that
    # other load on the machine disturbs much less than the rates. websockify forks per tunnel, so only
    # the gateway's and HAProxy's are known.
    cpu = _Cpu(pid if path.name in ("gateway", "haproxy-tcp") else None)
    result: dict = {"down_mb_s": round(await download(path, ports, tokens("down", 1)[0], args.mb), 1)}
    cpu.note("us_per_mb_down", args.mb)
    result["up_mb_s"] = round(await upload(path, ports, tokens("up", 1)[0], args.mb), 1)
    cpu.note("us_per_mb_up", args.mb)
    result["round_trip"] = await round_trips(path, ports, tokens("rtt", 1)[0], args.round_trips)
    cpu.note("us_per_round_trip", args.round_trips)
    result["new_tunnels"] = await new_tunnels(path, ports, tokens("idle", args.tunnels), args.concurrency)
    cpu.note("us_per_new_tunnel", args.tunnels)
    # One at a time: the time a user waits for a console, without the queueing of `concurrency` at once
    # (at 50 in flight, p99 is at least 50 / rate by Little's law).
    serial = getattr(args, "serial_tunnels", 0)
    if serial:
        result["new_tunnel_alone"] = await new_tunnels(path, ports, tokens("idle", serial), 1)
    # websockify forks a process per tunnel: a thousand of them would take the machine, not measure it.
    idle = args.idle if path.name != "websockify" else min(args.idle, args.websockify_idle)
    result["idle_tunnels"] = await idle_tunnels(path, ports, tokens("idle", idle), pid)
    if cpu.figures:
        result["relay_cpu"] = cpu.figures
    return result


class _Cpu:
    """CPU time of the relay's process between notes, per unit of the work done in between (µs)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.figures: dict[str, float] = {}
        self._last = self._seconds()

    def _seconds(self) -> float:
        return 0.0 if self.pid is None else tree_cpu_s(self.pid)

    def note(self, name: str, units: int) -> None:
        if self.pid is None or not units:
            return
        now = self._seconds()
        self.figures[name] = round((now - self._last) / units * 1e6, 1)
        self._last = now


def _with_ratios(results: dict) -> dict:
    raw = results["raw"]
    for name, figures in results.items():
        if name != "raw":
            figures["down_vs_raw"] = round(figures["down_mb_s"] / raw["down_mb_s"], 3)
            figures["up_vs_raw"] = round(figures["up_mb_s"] / raw["up_mb_s"], 3)
            figures["round_trip_over_raw_p50_us"] = round(
                figures["round_trip"]["p50_us"] - raw["round_trip"]["p50_us"], 1
            )
    return results


def run(args) -> dict:
    more_files()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ports_queue: multiprocessing.Queue = multiprocessing.Queue()
    desktop = multiprocessing.Process(target=_desktop_process, args=(ports_queue,), daemon=True)
    desktop.start()
    scratch = Path(tempfile.mkdtemp(prefix="vdi-bench-tunnel-"))
    processes: list[subprocess.Popen] = []
    try:
        ports = ports_queue.get(timeout=30)
        database = scratch / "bench.db"
        upgrade(f"sqlite:///{database}")
        db = Database(DatabaseSettings(url=f"sqlite:///{database}", pool_size=20))
        gateway_port, websockify_port = _free_port(), _free_port()
        config = _gateway_config(scratch / "gateway.toml", database, gateway_port)
        gateway = _start(
            [sys.executable, "-m", "vdi.cli", "--config", str(config), "gateway"],
            scratch / "gateway.log",
            gateway_port,
        )
        processes.append(gateway)
        websockify = _start(
            [
                sys.executable,
                "-m",
                "websockify",
                "--token-plugin",
                "gateway.websockify_plugin.ConsoleTokens",
                "--token-source",
                str(config),
                f"127.0.0.1:{websockify_port}",
            ],
            scratch / "websockify.log",
            websockify_port,
        )
        processes.append(websockify)
        relay_ports = {mode: _free_port() for mode in MODES}
        haproxy = _start(
            [HAPROXY, "-db", "-f", str(_haproxy_config(scratch / "haproxy.cfg", ports, relay_ports))],
            scratch / "haproxy.log",
            relay_ports["idle"],
        )
        processes.append(haproxy)
        paths = [
            Route("raw", None, log_in=True),
            Route(
                "gateway",
                f"ws://127.0.0.1:{gateway_port}/ws",
                log_in=False,
                tokens=TokenSource(db, _seed(db, ports, sealed=True)),
            ),
            Route(
                "websockify",
                f"ws://127.0.0.1:{websockify_port}/",
                log_in=True,
                tokens=TokenSource(db, _seed(db, ports, sealed=False)),
            ),
            Route("haproxy-tcp", None, log_in=True, ports=relay_ports),
        ]
        pids = {"raw": None, "gateway": gateway.pid, "websockify": None, "haproxy-tcp": haproxy.pid}
        results = {}
        for path in paths:
            if args.only and path.name not in args.only and path.name != "raw":
                continue
            results[path.name] = asyncio.run(measure(path, ports, args, pids[path.name]))
        db.close()
    finally:
        for process in processes:
            _stop(process)
        desktop.kill()
        desktop.join(10)
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "benchmark": "tunnel",
        "mb": args.mb,
        "tunnels": args.tunnels,
        "concurrency": args.concurrency,
        "idle": args.idle,
        "cores": os.cpu_count(),
        "results": _with_ratios(results),
    }


def main(args) -> int:
    print(json.dumps(run(args), indent=2))
    return 0
