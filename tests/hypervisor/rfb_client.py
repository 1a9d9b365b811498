"""Just enough of an RFB 3.8 client (RFC 6143) to fetch one raw framebuffer from an unauthenticated server."""

from __future__ import annotations

import socket
import struct
from collections import Counter
from dataclasses import dataclass

SECURITY_NONE = 1
ENCODING_RAW = 0


@dataclass(frozen=True)
class PixelFormat:
    bytes_per_pixel: int
    big_endian: bool
    shifts: tuple[int, int, int]  # red, green, blue
    maxima: tuple[int, int, int]

    @classmethod
    def parse(cls, raw: bytes) -> PixelFormat:
        # RFC 6143 §7.4: bpp, depth, big-endian, true-colour, r/g/b max (u16), r/g/b shift (u8), padding
        bpp, _depth, big_endian, _true_colour, r_max, g_max, b_max, r_shift, g_shift, b_shift = struct.unpack(
            ">BBBBHHHBBB3x", raw
        )
        return cls(bpp // 8, bool(big_endian), (r_shift, g_shift, b_shift), (r_max, g_max, b_max))

    def rgb(self, pixel: bytes) -> tuple[int, int, int]:
        value = int.from_bytes(pixel, "big" if self.big_endian else "little")
        red, green, blue = (
            (value >> shift) & top for shift, top in zip(self.shifts, self.maxima, strict=True)
        )
        return red, green, blue


@dataclass(frozen=True)
class Framebuffer:
    width: int
    height: int
    pixel_format: PixelFormat
    pixels: bytes

    def colour_counts(self) -> Counter[tuple[int, int, int]]:
        step = self.pixel_format.bytes_per_pixel
        raw = Counter(self.pixels[i : i + step] for i in range(0, len(self.pixels), step))
        return Counter({self.pixel_format.rgb(pixel): count for pixel, count in raw.items()})


def read_banner(host: str, port: int, timeout_s: float = 10.0) -> bytes:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        return _read_exactly(sock, 12)


def grab_framebuffer(host: str, port: int, timeout_s: float = 10.0) -> Framebuffer:
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        width, height, pixel_format = _handshake(sock)
        # Raw only, so the reply is plain pixels (RFC 6143 §7.5.2, §7.7.1).
        sock.sendall(struct.pack(">BxHi", 2, 1, ENCODING_RAW))
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        pixels = _read_update(sock, width, height, pixel_format.bytes_per_pixel)
    return Framebuffer(width, height, pixel_format, pixels)


def _handshake(sock: socket.socket) -> tuple[int, int, PixelFormat]:
    version = _read_exactly(sock, 12)
    if version != b"RFB 003.008\n":
        raise ValueError(f"unexpected RFB version {version!r}")
    sock.sendall(version)
    count = _read_exactly(sock, 1)[0]
    types = _read_exactly(sock, count)
    if SECURITY_NONE not in types:
        raise ValueError(f"server does not offer security type None: {list(types)}")
    sock.sendall(bytes([SECURITY_NONE]))
    if struct.unpack(">I", _read_exactly(sock, 4))[0] != 0:
        raise ValueError("security handshake failed")
    sock.sendall(b"\x01")  # ClientInit: shared
    width, height = struct.unpack(">HH", _read_exactly(sock, 4))
    pixel_format = PixelFormat.parse(_read_exactly(sock, 16))
    name_length = struct.unpack(">I", _read_exactly(sock, 4))[0]
    _read_exactly(sock, name_length)
    return width, height, pixel_format


def _read_update(sock: socket.socket, width: int, height: int, bpp: int) -> bytes:
    """Collect FramebufferUpdate rectangles until the whole screen has arrived."""
    screen = bytearray(width * height * bpp)
    covered = 0
    while covered < width * height:
        message_type = _read_exactly(sock, 1)[0]
        if message_type != 0:
            raise ValueError(f"unexpected server message {message_type}")
        _read_exactly(sock, 1)
        (rectangles,) = struct.unpack(">H", _read_exactly(sock, 2))
        for _ in range(rectangles):
            x, y, w, h, encoding = struct.unpack(">HHHHi", _read_exactly(sock, 12))
            if encoding != ENCODING_RAW:
                raise ValueError(f"unexpected encoding {encoding}")
            data = _read_exactly(sock, w * h * bpp)
            for row in range(h):
                start = ((y + row) * width + x) * bpp
                screen[start : start + w * bpp] = data[row * w * bpp : (row + 1) * w * bpp]
            covered += w * h
    return bytes(screen)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = sock.recv(size - len(buffer))
        if not chunk:
            raise ConnectionError(f"server closed the connection after {len(buffer)} of {size} bytes")
        buffer += chunk
    return bytes(buffer)
