"""Time to desktop: `vdi bench time-to-desktop --config FILE [--runs 20]` against a running broker.

Each run signs in through the REST API, presses connect (POST /api/v1/pools/{pool}/connect), fetches
a console token, opens the gateway WebSocket with the portal's Origin, speaks RFB 3.8 (security
None) and requests a full framebuffer: the clock stops when the first FramebufferUpdate arrives,
which is what a browser's noVNC would paint first. Then the session is logged off.

"prewarmed" uses a pool with spares (each run waits until the pool manager has refilled its spare,
read from the broker's /metrics); "cold" uses a pool without spares, so every connect clones and
starts a new desktop. Both pools should be floating, so logoff discards the desktop.
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
from dataclasses import dataclass

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from vdi.config import Config

RFB_VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
FRAMEBUFFER_UPDATE = 0


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

    def metric(self, name: str, labels: dict[str, str]) -> float | None:
        text = self.opener.open(f"{self.base_url}/metrics", timeout=30).read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{") and _labels_of(line) == wanted:
                return float(line.rsplit(" ", 1)[1])
        return None


def _labels_of(line: str) -> str:
    inner = line[line.index("{") + 1 : line.index("}")]
    return ",".join(sorted(inner.split(",")))


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

    async def first_framebuffer_update(self) -> None:
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
        await self.read(16)  # pixel format
        (name_length,) = struct.unpack(">I", await self.read(4))
        await self.read(name_length)
        self.socket.write_message(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height), binary=True)
        while (await self.read(1))[0] != FRAMEBUFFER_UPDATE:
            pass  # other server messages (bell, colour map) cannot come before it here, but be lenient


async def _console_first_frame(portal: Portal, session_id: str) -> None:
    grant = portal.post(f"/api/v1/sessions/{session_id}/console-token")
    url = f"{grant['gateway_url']}?token={grant['token']}"
    request = HTTPRequest(
        url, headers={"Origin": portal.base_url}, connect_timeout=30, ssl_options=portal.tls
    )
    socket = await websocket_connect(request)
    try:
        await RfbStream(socket).first_framebuffer_update()
    finally:
        socket.close()


def one_run(portal: Portal, pool: str) -> float:
    started = time.perf_counter()
    session = portal.post(f"/api/v1/pools/{pool}/connect")
    asyncio.run(asyncio.wait_for(_console_first_frame(portal, session["session_id"]), 120))
    elapsed = time.perf_counter() - started
    portal.post(f"/api/v1/sessions/{session['session_id']}/logoff")
    return elapsed


def wait_for_spare(portal: Portal, pool: str, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while (portal.metric("vdi_pool_desktops", {"pool": pool, "use": "spare"}) or 0) < 1:
        if time.monotonic() > deadline:
            raise BenchError(f"pool {pool} has no running spare after {deadline_s:.0f} s")
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


def measure(portal: Portal, pool: str, runs: int, prewarmed: bool) -> dict:
    samples = []
    for _ in range(runs):
        if prewarmed:
            wait_for_spare(portal, pool)
        samples.append(one_run(portal, pool))
    return {"pool": pool, **summary(samples)}


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
        result = {"benchmark": "time-to-desktop", "broker": base_url, "virt": args.virt_note}
        if args.prewarmed_pool:
            result["prewarmed"] = measure(portal, args.prewarmed_pool, args.runs, prewarmed=True)
        if args.cold_pool:
            result["cold"] = measure(portal, args.cold_pool, args.runs, prewarmed=False)
    except (BenchError, OSError) as exc:
        print(f"vdi bench time-to-desktop: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
