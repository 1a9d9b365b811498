"""Console recording: `vdi bench recording [--seconds 60] [--scenario terminal] [--mb 256]`, JSON out.

Two figures, everything on loopback and stopped at the end:

- storage per hour of an active desktop: a real Xvnc (with a VNC password, as desktops have) shows a
  full-screen xterm doing work (`terminal`: `top` redrawing every second; `scroll`: text scrolling
  steadily; `idle`: nothing moves). A client speaking as noVNC does (its pixel format and encodings,
  an incremental update request every 50 ms) watches it through `vdi gateway` with recording on for a fixed
  time; the bench reads the recording's index and scales its bytes on disk to one hour.
- what recording costs the relay: the tunnel bench's fake desktop streams raw framebuffer updates through
  the gateway with the pool's recording off and on; MB/s each way and their ratio.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from broker.db import Database
from broker.db.config import DatabaseSettings
from broker.db.migrate import upgrade
from broker.db.models import Desktop, DesktopSession, Host, Pool, User
from broker.db.tokens import ConsolePolicy, issue_token
from broker.db.vnc_passwords import VncPasswordBox
from broker.recordings import list_recordings, parse_utc
from vdi.bench import tunnel

MIB = 1 << 20
ORIGIN = tunnel.ORIGIN
KEY = tunnel.KEY
PASSWORD = tunnel.PASSWORD
# noVNC 1.x: SetPixelFormat 32 bpp, depth 24, little-endian, true colour, red at bit 0 (core/rfb.js).
NOVNC_PIXEL_FORMAT = struct.pack(">B3xBBBBHHHBBB3x", 0, 32, 24, 0, 1, 255, 255, 255, 0, 8, 16)
# The encodings noVNC asks for that the gateway relays: Tight, ZRLE, Hextile, CopyRect, Raw, its default
# quality (6) and compression (2) levels, DesktopSize and LastRect.
NOVNC_ENCODINGS = (7, -260, 16, 5, 2, 6, 1, 0, -26, -254, -223, -224)
UPDATE_INTERVAL_S = 0.05
SCENARIOS = {
    "idle": None,
    "terminal": ["top", "-d", "1"],
    "scroll": ["sh", "-c", "while :; do ls -l /usr/bin /usr/lib; sleep 0.5; done"],
}


class LocalXvnc:
    """A real Xvnc on a free loopback port with a VNC password, and programs on its display."""

    def __init__(self, workdir: Path, password: str, width: int = 1280, height: int = 800) -> None:
        self.workdir, self.password = workdir, password
        self.width, self.height = width, height
        self.port = 0
        self.display = ""
        self._server: subprocess.Popen | None = None
        self._programs: list[subprocess.Popen] = []

    def start(self, timeout_s: float = 30.0) -> LocalXvnc:
        self.workdir.mkdir(parents=True, exist_ok=True)
        password_file = self.workdir / "passwd"
        obfuscated = subprocess.run(
            ["vncpasswd", "-f"], input=self.password.encode(), capture_output=True, check=True
        ).stdout
        password_file.write_bytes(obfuscated)
        self.port = _free_port()
        read_end, write_end = os.pipe()
        argv = [
            "Xvnc",
            "-displayfd",
            str(write_end),
            "-geometry",
            f"{self.width}x{self.height}",
            "-depth",
            "24",
            "-rfbport",
            str(self.port),
            "-localhost",
            "-nolisten",
            "tcp",
            "-SecurityTypes",
            "VncAuth",
            "-PasswordFile",
            str(password_file),
            "-AlwaysShared",
        ]
        with (self.workdir / "xvnc.log").open("wb") as log:
            self._server = subprocess.Popen(argv, stdout=log, stderr=log, pass_fds=(write_end,))
        os.close(write_end)
        try:
            self.display = ":" + self._read_display(read_end, timeout_s)
        finally:
            os.close(read_end)
        return self

    def _read_display(self, fd: int, timeout_s: float) -> str:
        deadline, text = time.monotonic() + timeout_s, b""
        while not text.endswith(b"\n"):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 16) if ready else b""
            if not chunk:
                self.stop()
                log = (self.workdir / "xvnc.log").read_text(errors="replace")[-400:]
                raise tunnel.BenchError(f"Xvnc did not start: {log}")
            text += chunk
        return text.decode().strip()

    def run(self, argv: list[str]) -> subprocess.Popen:
        """A program on the display, stopped with the server."""
        env = {**os.environ, "DISPLAY": self.display}
        program = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._programs.append(program)
        return program

    def terminal(self, background: str, command: list[str] | None = None) -> subprocess.Popen:
        """A full-screen xterm in `background` colour, running `command` (or only its shell prompt)."""
        argv = ["xterm", "-fa", "DejaVu Sans Mono", "-fs", "10", "-bg", background, "-fg", "white"]
        argv += ["-geometry", "400x200+0+0"]
        return self.run(argv + (["-e", *command] if command else []))

    def stop(self) -> None:
        for process in [*self._programs, self._server]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self._programs, self._server]:
            if process is not None:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._programs.clear()

    def __enter__(self) -> LocalXvnc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- storage per hour ----------------------------------------------------------------------------------


def seed_desktop(db: Database, port: int, password: str, key: str, name: str) -> int:
    """A running desktop at 127.0.0.1:`port` with its VNC password sealed, as the broker keeps it."""
    with db.transaction() as s:
        if s.get(User, "bench") is None:
            s.add(User(username="bench", display_name="Bench", groups=["bench"]))
            s.add(Pool(name="bench", display_name="Bench", image="demo", groups=["bench"]))
            s.add(Host(name="bench", uri="qemu:///system", console_access="direct"))
            s.flush()
        desktop = Desktop(
            pool_name="bench",
            host_name="bench",
            domain_name=name,
            image="demo",
            state="running",
            vnc_host="127.0.0.1",
            vnc_port=port,
            vnc_password_sealed=VncPasswordBox(key).seal(name, password),
        )
        s.add(desktop)
        s.flush()
        return desktop.id


def issue_recorded_token(db: Database, desktop_id: int, port: int, recording: str = "on") -> tuple[str, str]:
    """(session id, console token) of a new session on the desktop, its pool recording."""
    session_id = str(uuid.uuid4())
    with db.transaction() as s:
        s.add(DesktopSession(id=session_id, username="bench", desktop_id=desktop_id))
        s.flush()
        token = issue_token(
            s,
            session_id=session_id,
            desktop_id=desktop_id,
            host="127.0.0.1",
            port=port,
            ttl_s=300,
            route="direct",
            policy=ConsolePolicy(recording=recording),
        )
    return session_id, token


async def watch_like_novnc(ws_url: str, token: str, seconds: float, width: int, height: int) -> int:
    """Watch the console for `seconds` as noVNC would; bytes received."""
    request = HTTPRequest(f"{ws_url}?token={token}", headers={"Origin": ORIGIN}, connect_timeout=60)
    conn = await websocket_connect(request, max_message_size=64 * MIB)
    transport = tunnel.WsTransport(conn)
    reader = await tunnel.client_handshake(transport, log_in=False)
    await transport.send(NOVNC_PIXEL_FORMAT)
    await transport.send(
        struct.pack(f">BxH{len(NOVNC_ENCODINGS)}i", 2, len(NOVNC_ENCODINGS), *NOVNC_ENCODINGS)
    )
    await transport.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
    received = len(reader.buffer)

    async def requests() -> None:
        while True:
            await asyncio.sleep(UPDATE_INTERVAL_S)
            await transport.send(struct.pack(">BBHHHH", 3, 1, 0, 0, width, height))

    asker = asyncio.create_task(requests())
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                received += len(await asyncio.wait_for(transport.recv(), left))
    finally:
        asker.cancel()
        transport.close()
    return received


def wait_complete(root: Path, session_id: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = list_recordings(root, session_id=session_id)
        if found and found[0].state != "recording":
            return found[0]
        time.sleep(0.2)
    raise tunnel.BenchError(f"the recording of session {session_id} was not finished within {timeout_s} s")


def storage_per_hour(scratch: Path, args) -> dict:
    database = scratch / "bench.db"
    upgrade(f"sqlite:///{database}")
    db = Database(DatabaseSettings(url=f"sqlite:///{database}"))
    recordings = scratch / "recordings"
    port = _free_port()
    config = tunnel._gateway_config(
        scratch / "gateway.toml",
        database,
        port,
        f'recording_dir = "{recordings}"\nrecording_min_free_mb = 0\nrecording_compression_level = {args.level}\n',
    )
    argv = [sys.executable, "-m", "vdi.cli", "--config", str(config), "gateway"]
    gateway = tunnel._start(argv, scratch / "gateway.log", port)
    width, height = args.geometry
    try:
        with LocalXvnc(scratch / "xvnc", PASSWORD, width, height) as xvnc:
            xvnc.terminal("#202040", SCENARIOS[args.scenario])
            desktop_id = seed_desktop(db, xvnc.port, PASSWORD, KEY, f"bench-xvnc-{uuid.uuid4().hex[:6]}")
            session_id, token = issue_recorded_token(db, desktop_id, xvnc.port)
            url = f"ws://127.0.0.1:{port}/ws"
            cpu_before = _cpu_s(gateway.pid)
            received = asyncio.run(watch_like_novnc(url, token, args.seconds, width, height))
            index = wait_complete(recordings, session_id)
            gateway_cpu_s = _cpu_s(gateway.pid) - cpu_before
    finally:
        tunnel._stop(gateway)
        db.close()
    # The tunnel's time, start to end: an idle screen has records at its start only.
    hours = (parse_utc(index.ended_at) - parse_utc(index.started_at)).total_seconds() / 3600
    return {
        "scenario": args.scenario,
        "compression_level": args.level,
        "geometry": f"{width}x{height}",
        "seconds": args.seconds,
        "recorded_s": round(hours * 3600, 1),
        "rfb_bytes_to_browser": received,
        "recorded_rfb_bytes": index.raw_bytes,
        "bytes_on_disk": index.bytes,
        "segments": len(index.segments),
        "compression_ratio": round(index.raw_bytes / max(index.bytes, 1), 2),
        "mb_per_hour": round(index.bytes / hours / MIB, 1),
        "rfb_mb_per_hour": round(index.raw_bytes / hours / MIB, 1),
        # The gateway's CPU (relay, framing and recording, all threads) while it served this one console.
        "gateway_cpu_percent": round(gateway_cpu_s / args.seconds * 100, 2),
    }


# -- what recording costs the relay --------------------------------------------------------------------


def relay_cost(scratch: Path, args) -> dict:
    ports_queue: multiprocessing.Queue = multiprocessing.Queue()
    desktop = multiprocessing.Process(target=tunnel._desktop_process, args=(ports_queue,), daemon=True)
    desktop.start()
    database = scratch / "relay.db"
    upgrade(f"sqlite:///{database}")
    db = Database(DatabaseSettings(url=f"sqlite:///{database}", pool_size=20))
    port = _free_port()
    extra = f'recording_dir = "{scratch / "relay-recordings"}"\nrecording_min_free_mb = 0\n'
    extra += f"recording_compression_level = {args.level}\n"
    config = tunnel._gateway_config(scratch / "relay.toml", database, port, extra)
    argv = [sys.executable, "-m", "vdi.cli", "--config", str(config), "gateway"]
    gateway = None
    try:
        ports = ports_queue.get(timeout=30)
        gateway = tunnel._start(argv, scratch / "relay-gateway.log", port)
        sessions = tunnel._seed(db, ports, sealed=True)
        results, cpu = {}, {}
        for mode in ("off", "on", "off", "on"):  # twice each, interleaved: the machine is shared
            route = tunnel.Route(
                f"recording {mode}",
                f"ws://127.0.0.1:{port}/ws",
                log_in=False,
                tokens=tunnel.TokenSource(db, sessions, ConsolePolicy(recording=mode)),
            )
            token = route.tokens.issue("down", 1)[0]
            cpu_before = _cpu_s(gateway.pid)
            speed = asyncio.run(tunnel.download(route, ports, token, args.mb))
            cpu_per_gb = (_cpu_s(gateway.pid) - cpu_before) / (args.mb / 1024)
            results[mode] = max(results.get(mode, 0.0), speed)
            cpu[mode] = min(cpu.get(mode, float("inf")), cpu_per_gb)
    finally:
        if gateway is not None:
            tunnel._stop(gateway)
        desktop.kill()
        desktop.join(10)
        db.close()
    return {
        "mb": args.mb,
        "down_mb_s_recording_off": round(results["off"], 1),
        "down_mb_s_recording_on": round(results["on"], 1),
        "on_vs_off": round(results["on"] / results["off"], 3),
        # The gateway process's CPU time (all its threads) per GiB relayed: what recording adds per byte.
        "gateway_cpu_s_per_gb_recording_off": round(cpu["off"], 2),
        "gateway_cpu_s_per_gb_recording_on": round(cpu["on"], 2),
    }


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process, all threads (proc(5), fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args) -> dict:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    scratch = Path(tempfile.mkdtemp(prefix="vdi-bench-recording-"))
    try:
        result = {"benchmark": "recording", "cores": os.cpu_count()}
        result["storage"] = storage_per_hour(scratch, args)
        if args.mb:
            result["relay"] = relay_cost(scratch, args)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(args) -> int:
    print(json.dumps(run(args), indent=2))
    return 0
