"""The RFB protocol (RFC 6143) as the gateway needs it: handshake pieces and message framing, no I/O.

Everything here takes bytes and returns bytes or values, so it can be fuzzed: a malformed or unsupported
input raises `RfbError` with a reason safe to log and to show, never anything else.

Framing follows message boundaries in both directions without decoding pixels: the client's messages
are read whole (they are small, and the clipboard policy needs them), the server's rectangle payloads
are passed through as they arrive, and only its ServerCutText is held whole, up to a limit.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

# -- constants (RFC 6143 section 7 and the community registry of encodings) ------------------------

SECURITY_INVALID = 0
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2
SECURITY_RESULT_OK = b"\0\0\0\0"

CLIENT_SET_PIXEL_FORMAT = 0
CLIENT_SET_ENCODINGS = 2
CLIENT_FRAMEBUFFER_UPDATE_REQUEST = 3
CLIENT_KEY_EVENT = 4
CLIENT_POINTER_EVENT = 5
CLIENT_CUT_TEXT = 6
CLIENT_SET_DESKTOP_SIZE = 251  # ExtendedDesktopSize
CLIENT_QEMU = 255

SERVER_FRAMEBUFFER_UPDATE = 0
SERVER_SET_COLOUR_MAP_ENTRIES = 1
SERVER_BELL = 2
SERVER_CUT_TEXT = 3
SERVER_QEMU = 255

ENCODING_RAW = 0
ENCODING_COPY_RECT = 1
ENCODING_RRE = 2
ENCODING_HEXTILE = 5
ENCODING_ZLIB = 6
ENCODING_TIGHT = 7
ENCODING_ZRLE = 16
ENCODING_TIGHT_PNG = -260
PSEUDO_DESKTOP_SIZE = -223
PSEUDO_LAST_RECT = -224
PSEUDO_CURSOR = -239
PSEUDO_QEMU_EXTENDED_KEY_EVENT = -258
PSEUDO_QEMU_LED_EVENT = -261
PSEUDO_DESKTOP_NAME = -307
PSEUDO_EXTENDED_DESKTOP_SIZE = -308
PSEUDO_EXTENDED_CLIPBOARD = -1063131698  # 0xc0a1e5ce as a signed 32-bit value
# JPEG quality and zlib compression levels: hints to the server, never sent back as rectangles.
PSEUDO_QUALITY_LEVELS = range(-32, -22)
PSEUDO_COMPRESS_LEVELS = range(-256, -246)

# What the server may use because the gateway can frame it. Everything else a client asks for (H.264,
# Fence, continuous updates, xvp, VMware cursor, extended mouse buttons…) is removed from its
# SetEncodings, so the server never sends a message or rectangle the gateway could not follow.
RELAYED_ENCODINGS = frozenset(
    {
        ENCODING_RAW,
        ENCODING_COPY_RECT,
        ENCODING_RRE,
        ENCODING_HEXTILE,
        ENCODING_ZLIB,
        ENCODING_TIGHT,
        ENCODING_ZRLE,
        ENCODING_TIGHT_PNG,
        PSEUDO_DESKTOP_SIZE,
        PSEUDO_LAST_RECT,
        PSEUDO_CURSOR,
        PSEUDO_QEMU_EXTENDED_KEY_EVENT,
        PSEUDO_QEMU_LED_EVENT,
        PSEUDO_DESKTOP_NAME,
        PSEUDO_EXTENDED_DESKTOP_SIZE,
        PSEUDO_EXTENDED_CLIPBOARD,
        *PSEUDO_QUALITY_LEVELS,
        *PSEUDO_COMPRESS_LEVELS,
    }
)

# Extended Clipboard (the pseudo-encoding's specification in rfbproto): flags of a cut text message
# whose length is negative.
CLIPBOARD_TEXT = 1 << 0
CLIPBOARD_FORMAT_MASK = 0xFFFF
CLIPBOARD_CAPS = 1 << 24
CLIPBOARD_REQUEST = 1 << 25
CLIPBOARD_PEEK = 1 << 26
CLIPBOARD_NOTIFY = 1 << 27
CLIPBOARD_PROVIDE = 1 << 28

MAX_ENCODINGS = 256  # noVNC sends about 30
MAX_DESKTOP_NAME = 4096
MAX_SECURITY_REASON = 4096
HEXTILE_TILE = 16
_DISCARD_PIECE = 65536
# A parser's read of at least this many bytes gets a view of the input instead of a copy.
LARGE_READ = 4096


class RfbError(Exception):
    """The peer broke the protocol or asked for something the gateway refuses.

    `kind` is a metric label value ("malformed", "oversized", "unsupported", "auth");
    `reason` is safe to log and to send as a close reason.
    """

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _malformed(reason: str) -> RfbError:
    return RfbError("malformed", reason)


# -- handshake (RFC 6143 section 7.1 and 7.3) ------------------------------------------------------


def parse_version(banner: bytes) -> int:
    """The minor version of a ProtocolVersion message ("RFB 003.008\\n" → 8)."""
    if len(banner) != 12 or banner[:4] != b"RFB " or banner[7:8] != b"." or banner[11:] != b"\n":
        raise _malformed("not an RFB protocol version")
    major, minor = banner[4:7], banner[8:11]
    if not (major.isdigit() and minor.isdigit()) or int(major) != 3:
        raise RfbError("unsupported", "unsupported RFB version")
    # Section 7.1.1: other minor numbers (Apple's 3.889, 3.4/3.6 of old clients) are treated as 3.3.
    return int(minor) if int(minor) in (3, 7, 8) else 3


def version_banner(minor: int) -> bytes:
    return b"RFB 003.%03d\n" % minor


def negotiated_minor(server_minor: int) -> int:
    """The version the gateway answers a server with: the server's, at most 3.8."""
    return min(server_minor, 8)


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The VNC authentication response (section 7.2.2): DES-ECB of the challenge under the password.

    The key is the password's first 8 bytes, NUL-padded, with each byte's bits reversed: the original
    VNC code used a DES implementation that took key bits in the opposite order. Single DES is
    TripleDES with three equal keys.
    """
    if len(challenge) != 16:
        raise _malformed("VNC authentication challenge is not 16 bytes")
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode("latin-1", "replace")[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # noqa: S305 - the protocol's own
    return encryptor.update(challenge) + encryptor.finalize()


@dataclass
class PixelFormat:
    """Section 7.4: how pixels are laid out on the wire, which decides rectangle sizes."""

    bits_per_pixel: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255
    raw: bytes = field(default=b"", repr=False)

    @classmethod
    def parse(cls, raw: bytes) -> PixelFormat:
        bpp, depth, big_endian, true_colour, r_max, g_max, b_max = struct.unpack(">BBBBHHH6x", raw)
        if bpp not in (8, 16, 32):
            raise _malformed("bits-per-pixel must be 8, 16 or 32")
        return cls(bpp, depth, bool(big_endian), bool(true_colour), r_max, g_max, b_max, bytes(raw))

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    @property
    def tight_pixel_bytes(self) -> int:
        """TPIXEL of the Tight encoding: 3 bytes for 24-bit true colour in 32 bits, else a pixel."""
        packed = self.true_colour and self.bits_per_pixel == 32 and self.depth == 24
        if packed and (self.red_max, self.green_max, self.blue_max) == (255, 255, 255):
            return 3
        return self.bytes_per_pixel


@dataclass
class ServerInit:
    """Section 7.3.2: framebuffer size, pixel format and desktop name."""

    width: int
    height: int
    pixel_format: PixelFormat
    name: bytes

    @staticmethod
    def name_length(header: bytes) -> int:
        """The name's length from the first 24 bytes; refuses absurd names before they are read."""
        length = struct.unpack(">I", header[20:24])[0]
        if length > MAX_DESKTOP_NAME:
            raise RfbError("oversized", "desktop name too long")
        return length

    @classmethod
    def parse(cls, header: bytes, name: bytes) -> ServerInit:
        width, height = struct.unpack(">HH", header[:4])
        return cls(width, height, PixelFormat.parse(header[4:20]), bytes(name))

    def encode(self) -> bytes:
        head = struct.pack(">HH", self.width, self.height) + self.pixel_format.raw
        return head + struct.pack(">I", len(self.name)) + self.name


def security_types(data: bytes) -> list[int]:
    return list(data)


# -- the framing machinery -------------------------------------------------------------------------

# A parser is a generator that yields how many bytes it wants: n > 0 reads exactly n bytes (sent back
# to it), n < 0 passes the next -n bytes through to the other side without holding them.
Parser = Generator[int, bytes | None, None]


class Framer:
    """Feeds bytes of one direction to a parser and returns what to forward."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._parser = self._messages()
        self._want = next(self._parser)

    def _messages(self) -> Parser:
        raise NotImplementedError

    def emit(self, data: bytes) -> None:
        if data:
            self._out.append(data)

    def emit_cut(self, header: bytes, cut: CutText, decision: bytes | CutText | None) -> None:
        """Forward a cut text as the policy decided (see CutTextPolicy)."""
        if decision is cut:
            self.emit(header)
            self.emit(cut.payload)
        elif decision is not None:
            self.emit(decision)

    def feed(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        """The bytes to forward for this input (whole messages, or pixel data as it comes).

        Pixel data passes straight from the input, in slices of it, and messages are cut from it where
        they lie: only a message split between two inputs is gathered in the buffer (vdi bench tunnel).
        The slices refer to `data`, which must not change until they have been forwarded.
        """
        self._out = out = []
        view = memoryview(data)
        if self._buffer:
            view = self._complete_buffered(view)
        at, end = 0, len(view)
        while True:
            want = self._want
            if want < 0:
                take = min(-want, end - at)
                if take:
                    out.append(view[at : at + take])
                    at += take
                if take < -want:
                    self._want = want + take
                    return out
                self._want = self._parser.send(None)
            elif end - at >= want:
                # Large messages (cut text) are handed on as views of the input, small ones as bytes.
                chunk = view[at : at + want] if want >= LARGE_READ else bytes(view[at : at + want])
                at += want
                self._want = self._parser.send(chunk)
            else:
                self._buffer += view[at:]
                return out

    def _complete_buffered(self, view: memoryview) -> memoryview:
        """Finish the message begun in the buffer with the start of `view`; returns the rest of `view`.
        (The buffer holds a part of a message only while the parser wants more than it has: want > 0.)"""
        missing = self._want - len(self._buffer)
        self._buffer += view[:missing]
        if missing > len(view):
            return view[len(view) :]
        chunk = bytes(self._buffer)
        self._buffer.clear()
        self._want = self._parser.send(chunk)
        return view[missing:]

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def _u16(data: bytes, at: int = 0) -> int:
    return struct.unpack_from(">H", data, at)[0]


def _s32(data: bytes, at: int = 0) -> int:
    return struct.unpack_from(">i", data, at)[0]


def _u32(data: bytes, at: int = 0) -> int:
    return struct.unpack_from(">I", data, at)[0]


@dataclass
class CutText:
    """One ClientCutText or ServerCutText (section 7.5.6, 7.6.4), classic or extended.

    `payload` is the text (classic, Latin-1) or the flags and data (extended); `size` is the length
    the message declared; `complete` is false when the payload was too large to hold and was dropped.
    """

    extended: bool
    payload: bytes
    size: int
    complete: bool = True
    digest: bytes = b""


# A decision on a cut text: the message to forward instead (whole, with its header), the cut text itself
# to forward the message as it came (without building it again), or None to drop it.
CutTextPolicy = Callable[[CutText], "bytes | CutText | None"]


def cut_text_message(message_type: int, cut: CutText) -> bytes:
    length = -len(cut.payload) if cut.extended else len(cut.payload)
    return struct.pack(">B3xi", message_type, length) + cut.payload


class _Shared:
    """State both directions need: the pixel format the client asked for (rectangle sizes)."""

    def __init__(self, pixel_format: PixelFormat) -> None:
        self.pixel_format = pixel_format


class RfbSession:
    """The two framers of one tunnel after ServerInit, sharing the pixel format."""

    def __init__(
        self,
        server_init: ServerInit,
        *,
        max_client_message: int,
        max_server_cut_text: int,
        to_desktop: CutTextPolicy,
        to_client: CutTextPolicy,
    ) -> None:
        shared = _Shared(server_init.pixel_format)
        self.client = ClientFramer(shared, max_client_message, to_desktop)
        self.server = ServerFramer(shared, max_server_cut_text, to_client)


# Whole KeyEvent and PointerEvent messages, type byte included (section 7.5.4 and 7.5.5).
_INPUT_SIZES = {CLIENT_KEY_EVENT: 8, CLIENT_POINTER_EVENT: 6}


class ClientFramer(Framer):
    """Client-to-server messages (section 7.5 plus the QEMU and ExtendedDesktopSize ones), read whole."""

    def __init__(self, shared: _Shared, max_message: int, cut_text: CutTextPolicy) -> None:
        self._shared, self._max, self._cut_text = shared, max_message, cut_text
        self.input_seen = False  # a key or pointer event since the caller last reset it
        self._between = True  # the parser waits for the next message's type
        super().__init__()

    def feed(self, data: bytes | memoryview) -> list[bytes | memoryview]:
        # Most of what a browser sends is one key or pointer event per WebSocket message: such a message,
        # arriving between messages, is forwarded as it is without a turn through the parser, which it
        # would leave where it was (vdi bench tunnel, round trip).
        if data and self._between and len(data) == _INPUT_SIZES.get(data[0]) and not self._buffer:
            self.input_seen = True
            return [data]
        return super().feed(data)

    def _messages(self) -> Parser:
        handlers = {
            CLIENT_SET_PIXEL_FORMAT: self._set_pixel_format,
            CLIENT_SET_ENCODINGS: self._set_encodings,
            CLIENT_FRAMEBUFFER_UPDATE_REQUEST: self._fixed(9),
            CLIENT_KEY_EVENT: self._input(7),
            CLIENT_POINTER_EVENT: self._input(5),
            CLIENT_CUT_TEXT: self._cut,
            CLIENT_SET_DESKTOP_SIZE: self._set_desktop_size,
            CLIENT_QEMU: self._qemu,
        }
        while True:
            self._between = True
            kind = yield 1
            self._between = False
            handler = handlers.get(kind[0])
            if handler is None:
                raise RfbError("unsupported", f"unsupported client message type {kind[0]}")
            yield from handler(kind)

    def _fixed(self, size: int) -> Callable[[bytes], Parser]:
        def read(kind: bytes) -> Parser:
            self.emit(kind + (yield size))

        return read

    def _input(self, size: int) -> Callable[[bytes], Parser]:
        def read(kind: bytes) -> Parser:
            self.emit(kind + (yield size))
            self.input_seen = True

        return read

    def _set_pixel_format(self, kind: bytes) -> Parser:
        body = yield 19
        # Section 7.5.1: updates the client asks for after this come in the new format. Clients send it
        # right after ServerInit, before their first FramebufferUpdateRequest (noVNC always does), so
        # applying it as it passes is exact for them.
        self._shared.pixel_format = PixelFormat.parse(body[3:])
        self.emit(kind + body)

    def _set_encodings(self, kind: bytes) -> Parser:
        head = yield 3
        count = _u16(head, 1)
        if count > MAX_ENCODINGS:
            raise RfbError("oversized", "too many encodings")
        listed = struct.unpack(f">{count}i", (yield 4 * count)) if count else ()
        # The server may only use what the gateway can frame (section 7.5.2 lets a client list any).
        kept = [encoding for encoding in listed if encoding in RELAYED_ENCODINGS]
        self.emit(kind + struct.pack(f">xH{len(kept)}i", len(kept), *kept))

    def _cut(self, kind: bytes) -> Parser:
        head = yield 7
        declared = _s32(head, 3)
        size = -declared if declared < 0 else declared
        if size > self._max:
            raise RfbError("oversized", "client message too large")
        cut = CutText(declared < 0, (yield size), size)
        self.emit_cut(kind + head, cut, self._cut_text(cut))

    def _set_desktop_size(self, kind: bytes) -> Parser:
        head = yield 7  # padding, width, height, number of screens, padding
        screens = head[5]
        self.emit(kind + head + (yield 16 * screens))

    def _qemu(self, kind: bytes) -> Parser:
        sub = yield 1
        if sub[0] == 0:  # QEMU extended key event: down-flag (u16), keysym, keycode
            self.emit(kind + sub + (yield 10))
            self.input_seen = True
            return
        if sub[0] != 1:
            raise RfbError("unsupported", f"unsupported QEMU client message {sub[0]}")
        operation = yield 2  # QEMU audio: enable, disable, or set format (+ format, channels, frequency)
        rest = (yield 6) if _u16(operation) == 2 else b""
        if _u16(operation) > 2:
            raise _malformed("unknown QEMU audio operation")
        self.emit(kind + sub + operation + rest)


class ServerFramer(Framer):
    """Server-to-client messages (section 7.6): rectangle payloads pass through, cut text is held."""

    def __init__(self, shared: _Shared, max_cut_text: int, cut_text: CutTextPolicy) -> None:
        self._shared, self._max, self._cut_text = shared, max_cut_text, cut_text
        super().__init__()

    def _messages(self) -> Parser:
        while True:
            kind = yield 1
            if kind[0] == SERVER_FRAMEBUFFER_UPDATE:
                yield from self._framebuffer_update(kind)
            elif kind[0] == SERVER_SET_COLOUR_MAP_ENTRIES:
                head = yield 5  # padding, first colour, number of colours
                self.emit(kind + head)
                yield -6 * _u16(head, 3)
            elif kind[0] == SERVER_BELL:
                self.emit(kind)
            elif kind[0] == SERVER_CUT_TEXT:
                yield from self._cut(kind)
            elif kind[0] == SERVER_QEMU:
                yield from self._qemu(kind)
            else:
                raise RfbError("unsupported", f"unsupported server message type {kind[0]}")

    def _framebuffer_update(self, kind: bytes) -> Parser:
        head = yield 3
        self.emit(kind + head)
        for _ in range(_u16(head, 1)):
            rect = yield 12
            self.emit(rect)
            width, height, encoding = struct.unpack(">4xHHi", rect)
            if encoding == PSEUDO_LAST_RECT:
                return
            yield from self._rectangle(encoding, width, height)

    def _rectangle(self, encoding: int, width: int, height: int) -> Parser:
        bpp = self._shared.pixel_format.bytes_per_pixel
        if encoding in (ENCODING_RAW,):
            yield -(width * height * bpp)
        elif encoding == ENCODING_COPY_RECT:
            yield -4
        elif encoding == ENCODING_RRE:
            head = yield 4
            self.emit(head)
            yield -(bpp + _u32(head) * (bpp + 8))
        elif encoding == ENCODING_HEXTILE:
            yield from self._hextile(width, height, bpp)
        elif encoding in (ENCODING_ZLIB, ENCODING_ZRLE):
            yield from self._length_prefixed()
        elif encoding in (ENCODING_TIGHT, ENCODING_TIGHT_PNG):
            yield from self._tight(width, height, encoding == ENCODING_TIGHT_PNG)
        elif encoding == PSEUDO_CURSOR:
            yield -(width * height * bpp + (width + 7) // 8 * height)
        elif encoding == PSEUDO_EXTENDED_DESKTOP_SIZE:
            head = yield 4
            self.emit(head)
            yield -16 * head[0]
        elif encoding == PSEUDO_DESKTOP_NAME:
            yield from self._length_prefixed()
        elif encoding == PSEUDO_QEMU_LED_EVENT:
            yield -1
        elif encoding not in (PSEUDO_DESKTOP_SIZE, PSEUDO_QEMU_EXTENDED_KEY_EVENT):
            raise RfbError("unsupported", f"unsupported rectangle encoding {encoding}")

    def _length_prefixed(self) -> Parser:
        head = yield 4
        self.emit(head)
        yield -_u32(head)

    def _hextile(self, width: int, height: int, bpp: int) -> Parser:
        # Section 7.7.4: 16x16 tiles, each with a subencoding byte saying what follows.
        for tile_y in range(0, height, HEXTILE_TILE):
            for tile_x in range(0, width, HEXTILE_TILE):
                sub = (yield 1)[0]
                self.emit(bytes((sub,)))
                if sub & 1:  # Raw
                    tile = min(HEXTILE_TILE, width - tile_x) * min(HEXTILE_TILE, height - tile_y)
                    yield -(tile * bpp)
                    continue
                yield -(bpp * (bool(sub & 2) + bool(sub & 4)))  # background, foreground
                if sub & 8:  # AnySubrects
                    count = yield 1
                    self.emit(count)
                    yield -(count[0] * ((bpp if sub & 16 else 0) + 2))

    def _tight(self, width: int, height: int, png: bool) -> Parser:
        # Tight (rfbproto "Tight Encoding"): a compression-control byte, then fill, JPEG, PNG or basic.
        control = yield 1
        self.emit(control)
        method = control[0] >> 4
        tpixel = self._shared.pixel_format.tight_pixel_bytes
        if method == 8:  # fill: one pixel
            yield -tpixel
        elif method == 9 or (method == 10 and png):  # JPEG or PNG: compact length, then the data
            yield from self._compact_length_data()
        elif method > 7:
            raise _malformed("invalid Tight compression control")
        else:
            yield from self._tight_basic(control[0], width, height, tpixel)

    def _tight_basic(self, control: int, width: int, height: int, tpixel: int) -> Parser:
        filter_id, size = 0, width * height * tpixel
        if control & 0x40:
            filter_id = (yield 1)[0]
            self.emit(bytes((filter_id,)))
        if filter_id == 1:  # palette
            colours = (yield 1)[0] + 1
            self.emit(bytes((colours - 1,)))
            yield -(colours * tpixel)
            size = (width + 7) // 8 * height if colours == 2 else width * height
        elif filter_id > 2:  # 0 copy, 2 gradient
            raise _malformed("invalid Tight filter")
        if size < 12:  # small data is sent uncompressed, without a length
            yield -size
        else:
            yield from self._compact_length_data()

    def _compact_length_data(self) -> Parser:
        length, shift = 0, 0
        for index in range(3):
            byte = (yield 1)[0]
            self.emit(bytes((byte,)))
            length |= (byte & (0xFF if index == 2 else 0x7F)) << shift
            shift += 7
            if index == 2 or not byte & 0x80:
                break
        yield -length

    def _cut(self, kind: bytes) -> Parser:
        head = yield 7
        declared = _s32(head, 3)
        size = -declared if declared < 0 else declared
        if size <= self._max:
            cut = CutText(declared < 0, (yield size), size)
        else:
            cut = yield from self._discard(declared < 0, size)
        self.emit_cut(kind + head, cut, self._cut_text(cut))

    def _discard(self, extended: bool, size: int) -> Generator[int, bytes | None, CutText]:
        """A cut text over the limit is read in pieces and dropped: only its size and hash are kept."""
        digest, left = hashlib.sha256(), size
        while left:
            piece = yield min(left, _DISCARD_PIECE)
            digest.update(piece)
            left -= len(piece)
        return CutText(extended, b"", size, complete=False, digest=digest.digest())

    def _qemu(self, kind: bytes) -> Parser:
        sub = yield 1
        if sub[0] != 1:
            raise RfbError("unsupported", f"unsupported QEMU server message {sub[0]}")
        operation = yield 2  # QEMU audio: end, begin, or data (+ length, samples)
        self.emit(kind + sub + operation)
        if _u16(operation) == 2:
            yield from self._length_prefixed()
        elif _u16(operation) > 2:
            raise _malformed("unknown QEMU audio operation")


# -- Extended Clipboard payloads -------------------------------------------------------------------


@dataclass
class ClipboardData:
    """The formats of an extended "provide" (format bit → data), or why they could not be read."""

    flags: int
    formats: dict[int, bytes]
    inflated: int  # bytes of zlib output read


class ClipboardTooLarge(Exception):
    """An extended clipboard payload inflates past the limit (possibly a zlib bomb)."""


def extended_flags(payload: bytes) -> int:
    if len(payload) < 4:
        raise _malformed("extended clipboard message without flags")
    return _u32(payload)


def inflate_limited(data: bytes, limit: int) -> bytes:
    """zlib-inflate at most `limit` bytes; more raises ClipboardTooLarge without producing them."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise _malformed("extended clipboard data is not zlib") from None
    if len(out) > limit:
        raise ClipboardTooLarge()
    return out


def parse_provide(payload: bytes, limit: int) -> ClipboardData:
    """An extended "provide": after the flags, a zlib stream of (u32 size, data) per format bit set."""
    flags = extended_flags(payload)
    stream = inflate_limited(payload[4:], limit)
    formats, at = {}, 0
    for bit in range(16):
        if not flags & (1 << bit):
            continue
        if at + 4 > len(stream):
            raise _malformed("extended clipboard data truncated")
        size = _u32(stream, at)
        if at + 4 + size > len(stream):
            raise _malformed("extended clipboard data truncated")
        formats[1 << bit] = stream[at + 4 : at + 4 + size]
        at += 4 + size
    return ClipboardData(flags, formats, len(stream))


def build_provide(formats: dict[int, bytes]) -> bytes:
    """The payload of an extended "provide" carrying `formats` (flags, then a fresh zlib stream)."""
    flags = CLIPBOARD_PROVIDE
    body = bytearray()
    for bit in sorted(formats):
        flags |= bit
        body += struct.pack(">I", len(formats[bit])) + formats[bit]
    return struct.pack(">I", flags) + zlib.compress(bytes(body))


# -- the browser's side of the handshake -----------------------------------------------------------


class BrowserHandshake(Framer):
    """The gateway as the browser's RFB server (section 7.1 to 7.3), offering only security type None.

    The token has already authenticated the browser, and the desktop's password stays in the gateway.
    `feed` returns what to send to the browser; once `done`, `leftover()` holds the first client
    messages that arrived with the ClientInit.
    """

    def __init__(self, server_init: ServerInit) -> None:
        self._server_init = server_init
        self.done = False
        self.shared = True
        super().__init__()

    def banner(self) -> bytes:
        return version_banner(8)

    def _messages(self) -> Parser:
        minor = parse_version((yield 12))
        if minor == 3:
            # Section 7.1.2 in 3.3: the server decides, as a U32, and sends no SecurityResult for None.
            self.emit(struct.pack(">I", SECURITY_NONE))
        else:
            self.emit(bytes((1, SECURITY_NONE)))
            if (yield 1)[0] != SECURITY_NONE:
                raise RfbError("unsupported", "browser chose a security type that was not offered")
            if minor == 8:  # section 7.1.3: 3.8 sends SecurityResult for None as well
                self.emit(SECURITY_RESULT_OK)
        self.shared = bool((yield 1)[0])
        self.emit(self._server_init.encode())
        self.done = True
        while True:  # the rest belongs to the client framer: hold it for leftover()
            yield 1 << 62

    def leftover(self) -> bytes:
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest
