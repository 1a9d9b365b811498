"""Time to desktop: `vdi bench time-to-desktop --config FILE [--runs 20]` against a running broker.

Each run signs in through the REST API, presses connect (POST /api/v1/pools/{pool}/connect), fetches
a console token, opens the gateway WebSocket with the portal's Origin, speaks RFB 3.8 (security
None) and requests a full framebuffer: the clock stops when the first FramebufferUpdate arrives,
which is what a browser's noVNC would paint first ("first frame": for a cold desktop, usually the
guest firmware's screen). Unless --no-desktop-screen is given, the run then keeps asking for updates
until the desktop's own screen is drawn ("desktop screen": more than half of the pixels the demo
desktop's blue) or --screen-timeout passes (then it is counted as missing, not as a time). Then the
session is logged off.

`--pool` names a session or app pool (server-based computing, docs/session-hosts.md): every connect starts
a new session on a session host, and the desktop's own screen is the session's panel drawn (the top strip in
the panel's colour of ansible/roles/smartwork_session_host/files/xfce4-panel.xml), reported as "session".

"prewarmed" uses a pool with spares (each run waits until the pool has a ready spare again, one whose
guest finished booting, read from the broker's /metrics); "cold" uses a pool without spares, so every
connect clones and starts a new desktop. Both pools should be floating, so logoff discards the desktop.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import ssl
import statistics
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from vdi.config import Config

RFB_VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
FRAMEBUFFER_UPDATE = 0
SET_COLOUR_MAP_ENTRIES = 1
BELL = 2
SERVER_CUT_TEXT = 3
ENCODING_RAW = 0
ENCODING_DESKTOP_SIZE = -223
# 32 bits per pixel, depth 24, little-endian, true colour, 8 bits each: red << 16 | green << 8 | blue.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
DESKTOP_SHARE = 0.5
# The SBC desktop's panel: its colour (xfce4-panel.xml's background-rgba 0.20 0.33 0.55), the row looked at
# (the panel is 28 pixels high at the top) and the share of that row it must cover.
PANEL_RGB = (51, 84, 140)
PANEL_ROW = 14
PANEL_SHARE = 0.6
PANEL_TOLERANCE = 24


class BenchError(Exception):
    pass


@dataclass
class Portal:
    """A signed-in API client with the portal's cookies and CSRF header."""

    base_url: str
    opener: urllib.request.OpenerDirector
    jar: http.cookiejar.CookieJar
    tls: ssl.SSLContext | None = None

    @classmethod
    def sign_in(
        cls, base_url: str, username: str, password: str, tls: ssl.SSLContext | None = None
    ) -> Portal:
        jar = http.cookiejar.CookieJar()
        handlers = [urllib.request.HTTPCookieProcessor(jar)]
        if tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=tls))
        portal = cls(base_url, urllib.request.build_opener(*handlers), jar, tls)
        portal.opener.open(f"{base_url}/login", timeout=30).read()
        portal.post("/api/v1/login", {"username": username, "password": password})
        return portal

    def post(self, path: str, body: dict | None = None) -> dict:
        xsrf = next((c.value for c in self.jar if c.name == "_xsrf"), "")
        # The URL is the configured broker's own address, never user input.
        request = urllib.request.Request(  # noqa: S310
            self.base_url + path,
            data=json.dumps(body or {}).encode(),
            headers={"Content-Type": "application/json", "X-XSRFToken": xsrf},
            method="POST",
        )
        try:
            with self.opener.open(request, timeout=120) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise BenchError(f"POST {path}: HTTP {exc.code} {exc.read()[:300]!r}") from None

    def samples(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        """Labels and value of each sample of `name` on the broker's /metrics."""
        text = self.opener.open(f"{self.base_url}/metrics", timeout=30).read().decode()
        for line in text.splitlines():
            if line.startswith(f"{name}{{"):
                inner = line[line.index("{") + 1 : line.index("}")]
                labels = dict(pair.split("=", 1) for pair in inner.split(","))
                yield {key: value.strip('"') for key, value in labels.items()}, float(line.rsplit(" ", 1)[1])

    def metric(self, name: str, labels: dict[str, str]) -> float | None:
        return next((value for found, value in self.samples(name) if found == labels), None)


class RfbStream:
    """The RFB byte stream carried in binary WebSocket messages of arbitrary size."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.buffer = b""

    async def read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            message = await self.socket.read_message()
            if message is None:
                raise BenchError(f"gateway closed the console: {self.socket.close_reason}")
            self.buffer += message
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def handshake(self) -> tuple[int, int]:
        """Version, security None, ClientInit; then ask for raw 32-bit pixels. Returns the screen size."""
        await self.read(12)
        self.socket.write_message(RFB_VERSION, binary=True)
        (count,) = struct.unpack("B", await self.read(1))
        if SECURITY_NONE not in await self.read(count):
            raise BenchError("the desktop's VNC server does not offer security type None")
        self.socket.write_message(bytes([SECURITY_NONE]), binary=True)
        if struct.unpack(">I", await self.read(4))[0] != 0:
            raise BenchError("VNC security handshake failed")
        self.socket.write_message(b"\x01", binary=True)  # ClientInit: shared
        width, height = struct.unpack(">HH", await self.read(4))
        await self.read(16)  # the server's pixel format; replaced by ours below
        (name_length,) = struct.unpack(">I", await self.read(4))
        await self.read(name_length)
        self.socket.write_message(struct.pack(">B3x", 0) + PIXEL_FORMAT, binary=True)
        encodings = (ENCODING_RAW, ENCODING_DESKTOP_SIZE)
        self.socket.write_message(
            struct.pack(f">BxH{len(encodings)}i", 2, len(encodings), *encodings), binary=True
        )
        return width, height

    def request(self, width: int, height: int, incremental: bool) -> None:
        self.socket.write_message(
            struct.pack(">BBHHHH", 3, int(incremental), 0, 0, width, height), binary=True
        )

    async def next_update(self, screen: Screen) -> None:
        """Read server messages until a FramebufferUpdate, and paint its rectangles into the screen."""
        while True:
            kind = (await self.read(1))[0]
            if kind == FRAMEBUFFER_UPDATE:
                break
            if kind == BELL:
                continue
            if kind == SERVER_CUT_TEXT:
                await self.read(3)
                (length,) = struct.unpack(">I", await self.read(4))
                await self.read(length)
            elif kind == SET_COLOUR_MAP_ENTRIES:
                _, _, count = struct.unpack(">BHH", await self.read(5))
                await self.read(6 * count)
            else:
                raise BenchError(f"unexpected RFB server message type {kind}")
        (rectangles,) = struct.unpack(">xH", await self.read(3))
        for _ in range(rectangles):
            x, y, width, height, encoding = struct.unpack(">HHHHi", await self.read(12))
            if encoding == ENCODING_DESKTOP_SIZE:
                screen.resize(width, height)
            elif encoding == ENCODING_RAW:
                screen.paint(x, y, width, height, await self.read(width * height * 4))
            else:
                raise BenchError(f"the server sent encoding {encoding}, which was not asked for")


class Screen:
    """The framebuffer as the client sees it, enough to tell when the desktop's own screen is up."""

    def __init__(self, width: int, height: int) -> None:
        self.pixels = numpy.zeros((height, width), dtype="<u4")

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.pixels.shape
        return width, height

    def resize(self, width: int, height: int) -> None:
        self.pixels = numpy.zeros((height, width), dtype="<u4")

    def paint(self, x: int, y: int, width: int, height: int, raw: bytes) -> None:
        self.pixels[y : y + height, x : x + width] = numpy.frombuffer(raw, dtype="<u4").reshape(height, width)

    def desktop_share(self) -> float:
        """Share of pixels in the demo desktop's background blue (the firmware's screen is black)."""
        red = (self.pixels >> 16) & 0xFF
        green = (self.pixels >> 8) & 0xFF
        blue = self.pixels & 0xFF
        return float(numpy.mean((blue >= 0x80) & (red < 0x40) & (green < 0x40)))

    def demo_desktop_drawn(self) -> bool:
        return self.desktop_share() > DESKTOP_SHARE

    def panel_drawn(self) -> bool:
        """The SBC session's panel covers most of its row at the top of the screen."""
        width, height = self.size
        if height <= PANEL_ROW:
            return False
        row = self.pixels[PANEL_ROW].astype("i4")
        channels = ((row >> 16) & 0xFF, (row >> 8) & 0xFF, row & 0xFF)
        close = numpy.ones(width, dtype=bool)
        for channel, wanted in zip(channels, PANEL_RGB, strict=True):
            close &= numpy.abs(channel - wanted) < PANEL_TOLERANCE
        return float(numpy.mean(close)) > PANEL_SHARE


@dataclass
class RunTimes:
    first_frame_s: float
    desktop_screen_s: float | None  # None: not drawn before the deadline, or not asked for
    connect_s: float = 0.0  # until the broker answered the connect (placement and the desktop's start)


async def _console_times(
    portal: Portal,
    session_id: str,
    started: float,
    screen_timeout_s: float | None,
    drawn: Callable[[Screen], bool],
) -> RunTimes:
    grant = portal.post(f"/api/v1/sessions/{session_id}/console-token")
    # The broker's URL may carry a query of its own (the request id, docs/logging.md), as console.js allows for.
    separator = "&" if "?" in grant["gateway_url"] else "?"
    url = f"{grant['gateway_url']}{separator}token={grant['token']}"
    request = HTTPRequest(
        url, headers={"Origin": portal.base_url}, connect_timeout=30, ssl_options=portal.tls
    )
    socket = await websocket_connect(request)
    try:
        stream = RfbStream(socket)
        screen = Screen(*await stream.handshake())
        stream.request(*screen.size, incremental=False)
        await stream.next_update(screen)
        first_frame = time.perf_counter() - started
        if screen_timeout_s is None:
            return RunTimes(first_frame, None)
        deadline = time.perf_counter() + screen_timeout_s
        while not drawn(screen):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return RunTimes(first_frame, None)
            stream.request(*screen.size, incremental=True)
            try:
                await asyncio.wait_for(stream.next_update(screen), remaining)
            except TimeoutError:
                return RunTimes(first_frame, None)
        return RunTimes(first_frame, time.perf_counter() - started)
    finally:
        socket.close()


def one_run(
    portal: Portal,
    pool: str,
    screen_timeout_s: float | None = None,
    drawn: Callable[[Screen], bool] = Screen.demo_desktop_drawn,
) -> RunTimes:
    started = time.perf_counter()
    session = portal.post(f"/api/v1/pools/{pool}/connect")
    connected = time.perf_counter() - started
    limit = 120 + (screen_timeout_s or 0)
    times = asyncio.run(
        asyncio.wait_for(
            _console_times(portal, session["session_id"], started, screen_timeout_s, drawn), limit
        )
    )
    portal.post(f"/api/v1/sessions/{session['session_id']}/logoff")
    times.connect_s = connected
    return times


def wait_for_spare(portal: Portal, pool: str, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while (portal.metric("vdi_pool_desktops", {"pool": pool, "use": "spare_ready"}) or 0) < 1:
        if time.monotonic() > deadline:
            raise BenchError(f"pool {pool} has no ready spare after {deadline_s:.0f} s")
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(samples: list[float]) -> dict:
    ms = [s * 1000 for s in samples]
    return {
        "runs": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(percentile(ms, 0.99), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
    }


def measure(
    portal: Portal,
    pool: str,
    runs: int,
    prewarmed: bool,
    screen_timeout_s: float | None,
    drawn: Callable[[Screen], bool] = Screen.demo_desktop_drawn,
) -> dict:
    results = []
    for _ in range(runs):
        if prewarmed:
            wait_for_spare(portal, pool)
        results.append(one_run(portal, pool, screen_timeout_s, drawn))
    report = {"pool": pool, **summary([r.first_frame_s for r in results])}
    if screen_timeout_s is not None:
        drawn = [r.desktop_screen_s for r in results if r.desktop_screen_s is not None]
        report["desktop_screen"] = {
            **(summary(drawn) if drawn else {"runs": 0}),
            "missing": runs - len(drawn),
        }
    report["steps"] = steps(results)
    return report


def steps(results: list[RunTimes]) -> dict:
    """Where the time went, each step's p50 and p99: the broker's connect (placement and the desktop's
    start), then token, gateway and RFB login to the first frame, then the desktop drawing its own screen."""
    parts = {
        "connect": [r.connect_s for r in results],
        "console_to_first_frame": [r.first_frame_s - r.connect_s for r in results],
        "first_frame_to_screen": [
            r.desktop_screen_s - r.first_frame_s for r in results if r.desktop_screen_s is not None
        ],
    }
    return {
        name: {key: summary(values)[key] for key in ("p50_ms", "p99_ms")}
        for name, values in parts.items()
        if values
    }


def virt_types(portal: Portal) -> str:
    """The virtualisation the broker's desktops booted with (kvm, qemu for TCG), from its /metrics."""
    samples = portal.samples("vdi_desktop_boot_duration_seconds_count")
    return ",".join(sorted({labels.get("virt_type", "") for labels, count in samples if count > 0}))


def broker_tls(config: Config) -> ssl.SSLContext | None:
    """Over HTTPS (e.g. `make demo`'s var/lab/demo-https.toml), trust the chain the broker is configured with."""
    if config.broker.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=str(config.broker.tls_cert))
    # The served chain ends at an intermediate, not a self-signed root: accept it as the anchor.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def main(config: Config, args) -> int:
    tls = broker_tls(config)
    scheme = "https" if tls else "http"
    base_url = f"{scheme}://{config.broker.listen_address}:{config.broker.port}"
    try:
        portal = Portal.sign_in(base_url, args.user, args.password, tls)
        screen_timeout_s = None if args.no_desktop_screen else args.screen_timeout
        result: dict = {"benchmark": "time-to-desktop", "broker": base_url}
        if args.prewarmed_pool:
            result["prewarmed"] = measure(portal, args.prewarmed_pool, args.runs, True, screen_timeout_s)
        if args.cold_pool:
            result["cold"] = measure(portal, args.cold_pool, args.runs, False, screen_timeout_s)
        if args.pool:
            result["session"] = measure(
                portal, args.pool, args.runs, False, screen_timeout_s, Screen.panel_drawn
            )
        if args.prewarmed_pool or args.cold_pool:
            result["virt"] = args.virt_note or virt_types(portal)
    except (BenchError, OSError) as exc:
        print(f"vdi bench time-to-desktop: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
