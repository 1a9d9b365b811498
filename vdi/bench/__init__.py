"""Benchmarks behind `vdi bench …` (vdi/cli/bench.py): each prints JSON. Never run as timed tests."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from urllib.parse import SplitResult


def tree_cpu_s(pid: int, children: dict[int, list[int]] | None = None) -> float:
    """CPU seconds (user + system) of a process, its reaped children (cutime, cstime) and the live
    descendants listed in `children`; 0 for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command: state is field 3, utime..cstime are fields 14..17 (proc(5)).
    ticks = sum(int(value) for value in fields[11:15])
    own = ticks / os.sysconf("SC_CLK_TCK")
    return own + sum(tree_cpu_s(child, children) for child in (children or {}).get(pid, []))


def websocket_upgrade(parts: SplitResult, origin: str) -> bytes:
    """A browser's WebSocket upgrade request (RFC 6455 section 4.1) for the URL `parts`, with a fresh key."""
    key = base64.b64encode(os.urandom(16)).decode()
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\n\r\n"
    ).encode()


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame from a server (unmasked): its opcode and payload, the header read first, then exactly the
    payload (one copy out of the stream's buffer)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(length) if length else b""
