"""Stub desktops for multi-broker lab runs: thousands of desktops that cost nothing but answer RFB.

A logon storm of thousands of users, or a failover test, needs desktops whose consoles open through the
real gateway, and which two broker processes see alike; QEMU guests under TCG (this machine has no
hardware virtualisation) cannot be made by the thousand. So:

- `StubDesktopProvider` (registered as "stub") keeps each desktop as a file in a directory that all
  brokers share (`stub:///<directory>?port=<rfb port>`), so reconcile on any broker sees the same host;
  every desktop's display is the one `RfbStub` on 127.0.0.1:<rfb port>.
- `RfbStub` is a small RFB 3.8 server (RFC 6143): version, security type None, ServerInit; it counts
  what a console sends it (a test types into noVNC and sees the keys arrive) and answers a full
  FramebufferUpdateRequest with one small raw rectangle, so noVNC draws.
- `python -m vdi.lab.stub_desktops <vdi arguments>` is `vdi` with the provider registered: the lab's HA
  brokers are real `vdi broker` processes that way (SIGKILL kills the real thing).

Nothing here is for production hosts; the provider exists in lab processes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from gateway import rfb
from hypervisor.base import DesktopNotFound, DesktopSpec, DisplayEndpoint
from hypervisor.provider import DesktopProvider
from hypervisor.registry import register

STUB = "stub"
WIDTH, HEIGHT = 64, 48
# 32 bpp, depth 24, little endian, true colour, 255/255/255 max, shifts 16/8/0 (what noVNC asks for anyway).
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
SERVER_NAME = b"smartwork-vdi stub desktop"
# Client message sizes after the type byte (RFC 6143 section 7.5); SetEncodings and ClientCutText vary.
FIXED_SIZES = {
    rfb.CLIENT_SET_PIXEL_FORMAT: 19,
    rfb.CLIENT_FRAMEBUFFER_UPDATE_REQUEST: 9,
    rfb.CLIENT_KEY_EVENT: 7,
    rfb.CLIENT_POINTER_EVENT: 5,
}


def stub_uri(directory: Path, rfb_port: int) -> str:
    return f"stub://{Path(directory).resolve()}?port={rfb_port}"


class StubDesktopProvider(DesktopProvider):
    """Desktops as files in a shared directory; every display is the lab's RfbStub."""

    needs_image = False

    @classmethod
    def check_uri(cls, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme != STUB or not parts.path.startswith("/") or "port" not in parse_qs(parts.query):
            raise ValueError("expected stub:///<directory>?port=<rfb port> (lab stub desktops)")

    @property
    def _directory(self) -> Path:
        return Path(urlsplit(self.host.uri).path)

    @property
    def _port(self) -> int:
        return int(parse_qs(urlsplit(self.host.uri).query)["port"][0])

    def create_desktop(self, spec: DesktopSpec) -> DisplayEndpoint:
        self._directory.mkdir(parents=True, exist_ok=True)
        (self._directory / spec.domain_name).touch()
        return self.display(spec.domain_name)

    def destroy_desktop(self, domain_name: str) -> None:
        (self._directory / domain_name).unlink(missing_ok=True)

    def desktop_state(self, domain_name: str) -> str:
        return "running" if (self._directory / domain_name).exists() else "missing"

    def display(self, domain_name: str) -> DisplayEndpoint:
        if not (self._directory / domain_name).exists():
            raise DesktopNotFound(self.host.name, f"no desktop {domain_name}")
        return DisplayEndpoint("127.0.0.1", self._port)

    def list_desktops(self) -> list[str]:
        if not self._directory.is_dir():
            return []
        return sorted(path.name for path in self._directory.iterdir())


def register_stub_provider() -> None:
    register(STUB, StubDesktopProvider)


class RfbStub:
    """An RFB 3.8 server with no password on 127.0.0.1 (every stub desktop's display)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.connections = 0  # consoles that reached ServerInit
        self.open = 0
        self.key_events = 0
        self.received = 0  # bytes of client messages after ClientInit

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, backlog=1024)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(rfb.version_banner(8))
            await reader.readexactly(12)
            writer.write(bytes((1, rfb.SECURITY_NONE)))
            await reader.readexactly(1)
            writer.write(rfb.SECURITY_RESULT_OK)
            await reader.readexactly(1)  # ClientInit
            head = struct.pack(">HH", WIDTH, HEIGHT) + PIXEL_FORMAT
            writer.write(head + struct.pack(">I", len(SERVER_NAME)) + SERVER_NAME)
            self.connections += 1
            self.open += 1
            try:
                await self._messages(reader, writer)
            finally:
                self.open -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _messages(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            kind = (await reader.readexactly(1))[0]
            body = await self._body(kind, reader)
            self.received += 1 + len(body)
            if kind == rfb.CLIENT_KEY_EVENT:
                self.key_events += 1
            elif kind == rfb.CLIENT_FRAMEBUFFER_UPDATE_REQUEST and body[0] == 0:
                # Only a full (non-incremental) request gets a frame: nothing ever changes here, and
                # answering incremental ones would spin the console in a request/update loop.
                writer.write(_frame())
                await writer.drain()

    @staticmethod
    async def _body(kind: int, reader: asyncio.StreamReader) -> bytes:
        if kind in FIXED_SIZES:
            return await reader.readexactly(FIXED_SIZES[kind])
        if kind == rfb.CLIENT_SET_ENCODINGS:
            head = await reader.readexactly(3)
            return head + await reader.readexactly(4 * struct.unpack(">xH", head)[0])
        if kind == rfb.CLIENT_CUT_TEXT:
            head = await reader.readexactly(7)
            return head + await reader.readexactly(min(struct.unpack(">3xI", head)[0], 1 << 20))
        raise ConnectionError(f"stub desktop: client message type {kind} not spoken")


def _frame() -> bytes:
    """One FramebufferUpdate: a small raw rectangle of mid grey (noVNC draws it; enough to show life)."""
    width, height = 16, 16
    header = struct.pack(">BxH", rfb.SERVER_FRAMEBUFFER_UPDATE, 1)
    rect = struct.pack(">HHHHi", 0, 0, width, height, rfb.ENCODING_RAW)
    return header + rect + b"\x80\x80\x80\x00" * (width * height)


def main(argv: list[str] | None = None) -> int:
    register_stub_provider()
    from vdi.cli import main as vdi_main

    return vdi_main(argv)


if __name__ == "__main__":
    sys.exit(main())
