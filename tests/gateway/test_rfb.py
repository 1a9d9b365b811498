"""gateway/rfb.py: the RFB handshake pieces and the framing of every message the gateway relays."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from gateway import rfb
from tests.fixtures.gateway import SERVER_INIT

PIXEL_FORMAT_32 = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
PIXEL_FORMAT_16 = struct.pack(">BBBBHHHBBB3x", 16, 16, 0, 1, 31, 63, 31, 11, 5, 0)


class Recorder:
    """A cut-text policy that lets everything through and remembers what it saw."""

    def __init__(self, message_type: int) -> None:
        self.seen: list[rfb.CutText] = []
        self.message_type = message_type

    def __call__(self, cut: rfb.CutText) -> bytes | None:
        self.seen.append(cut)
        return rfb.cut_text_message(self.message_type, cut) if cut.complete else None


def session(max_message: int = 1 << 20) -> tuple[rfb.RfbSession, Recorder, Recorder]:
    to_desktop, to_client = Recorder(rfb.CLIENT_CUT_TEXT), Recorder(rfb.SERVER_CUT_TEXT)
    framers = rfb.RfbSession(
        SERVER_INIT,
        max_client_message=max_message,
        max_server_cut_text=max_message,
        to_desktop=to_desktop,
        to_client=to_client,
    )
    return framers, to_desktop, to_client


def feed_bytewise(framer: rfb.Framer, data: bytes) -> bytes:
    """Byte by byte: framing must not depend on how TCP or WebSocket frames cut the stream."""
    return b"".join(b"".join(framer.feed(data[i : i + 1])) for i in range(len(data)))


def rect(x: int, y: int, w: int, h: int, encoding: int) -> bytes:
    return struct.pack(">HHHHi", x, y, w, h, encoding)


def update(*rects: bytes, count: int | None = None) -> bytes:
    return struct.pack(
        ">BxH", rfb.SERVER_FRAMEBUFFER_UPDATE, len(rects) if count is None else count
    ) + b"".join(rects)


# -- handshake -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("banner", "minor"),
    [(b"RFB 003.008\n", 8), (b"RFB 003.007\n", 7), (b"RFB 003.003\n", 3), (b"RFB 003.889\n", 3)],
)
def test_protocol_versions(banner, minor):
    assert rfb.parse_version(banner) == minor


@pytest.mark.parametrize("banner", [b"RFB 004.000\n", b"HTTP/1.1 200", b"RFB 003.00x\n", b"RFB 003.008"])
def test_other_banners_are_refused(banner):
    with pytest.raises(rfb.RfbError):
        rfb.parse_version(banner)


def test_vnc_authentication_is_des_with_bit_reversed_key_bytes():
    challenge = bytes(range(16))
    # "pass" → 0x70 0x61 0x73 0x73, bits reversed per byte → 0x0e 0x86 0xce 0xce, NUL-padded to 8 bytes.
    key = bytes((0x0E, 0x86, 0xCE, 0xCE, 0, 0, 0, 0))
    expected = Cipher(TripleDES(key * 3), modes.ECB()).encryptor().update(challenge)  # noqa: S305 - RFB's own
    assert rfb.vnc_auth_response("pass", challenge) == expected
    # Only the first 8 characters count (RFC 6143 section 7.2.2).
    assert rfb.vnc_auth_response("12345678", challenge) == rfb.vnc_auth_response("123456789", challenge)


def test_server_init_round_trips_and_refuses_a_huge_name():
    encoded = SERVER_INIT.encode()
    assert rfb.ServerInit.parse(encoded[:24], encoded[24:]) == SERVER_INIT
    with pytest.raises(rfb.RfbError, match="desktop name too long"):
        rfb.ServerInit.name_length(encoded[:20] + struct.pack(">I", 1 << 30))


@pytest.mark.parametrize("version", [3, 7, 8])
def test_the_browser_handshake_offers_only_security_none(version):
    handshake = rfb.BrowserHandshake(SERVER_INIT)
    assert handshake.banner() == b"RFB 003.008\n"
    reply = b"".join(handshake.feed(rfb.version_banner(version)))
    if version == 3:
        assert reply == struct.pack(">I", rfb.SECURITY_NONE)
    else:
        assert reply == b"\x01\x01"
        reply = b"".join(handshake.feed(b"\x01"))
        assert reply == (rfb.SECURITY_RESULT_OK if version == 8 else b"")
    assert not handshake.done
    assert b"".join(handshake.feed(b"\x00" + b"\x04early")) == SERVER_INIT.encode()
    assert handshake.done and not handshake.shared
    assert handshake.leftover() == b"\x04early"


def test_the_browser_may_not_pick_vnc_authentication():
    handshake = rfb.BrowserHandshake(SERVER_INIT)
    handshake.feed(b"RFB 003.008\n")
    with pytest.raises(rfb.RfbError, match="not offered"):
        handshake.feed(bytes((rfb.SECURITY_VNC_AUTH,)))


# -- client messages -----------------------------------------------------------------------------------

CLIENT_MESSAGES = {
    "SetPixelFormat": b"\x00\x00\x00\x00" + PIXEL_FORMAT_32,
    "FramebufferUpdateRequest": struct.pack(">BBHHHH", 3, 1, 0, 0, 64, 48),
    "KeyEvent": struct.pack(">BBxxI", 4, 1, 0xFF0D),
    "PointerEvent": struct.pack(">BBHH", 5, 1, 10, 20),
    "ClientCutText": struct.pack(">B3xi", 6, 5) + b"hello",
    "ClientCutText extended": struct.pack(">B3xi", 6, -8) + struct.pack(">II", rfb.CLIPBOARD_CAPS, 0),
    "SetDesktopSize": struct.pack(">BxHHBx", 251, 800, 600, 1) + bytes(16),
    "QEMU extended key": struct.pack(">BBHII", 255, 0, 1, 0x61, 30),
    "QEMU audio enable": struct.pack(">BBH", 255, 1, 0),
    "QEMU audio format": struct.pack(">BBHBBI", 255, 1, 2, 3, 2, 44100),
}


@pytest.mark.parametrize("name", list(CLIENT_MESSAGES))
def test_every_client_message_passes_whole(name):
    framers, _, _ = session()
    message = CLIENT_MESSAGES[name]
    assert feed_bytewise(framers.client, message) == message
    assert framers.client.buffered == 0


def test_client_messages_in_one_chunk_keep_their_order():
    framers, to_desktop, _ = session()
    stream = b"".join(CLIENT_MESSAGES.values())
    assert b"".join(framers.client.feed(stream)) == stream
    assert [cut.extended for cut in to_desktop.seen] == [False, True]


def test_input_is_noticed_only_for_key_and_pointer_events():
    framers, _, _ = session()
    framers.client.feed(CLIENT_MESSAGES["FramebufferUpdateRequest"])
    assert not framers.client.input_seen
    framers.client.feed(CLIENT_MESSAGES["PointerEvent"])
    assert framers.client.input_seen


def test_key_and_pointer_events_framed_alone_or_amid_other_messages_come_out_the_same():
    """A lone key or pointer event skips the parser (the round trip's fast path); the same bytes in the
    middle of another message (a QEMU message's sub-type, a cut text's text) or after a message begun
    in an earlier input are still that message's."""
    framers, to_desktop, _ = session()
    pointer, key = CLIENT_MESSAGES["PointerEvent"], CLIENT_MESSAGES["KeyEvent"]
    for message in (pointer, key, pointer):
        framers.client.input_seen = False
        assert framers.client.feed(message) == [message]
        assert framers.client.input_seen
    framers.client.input_seen = False
    cut = struct.pack(">B3xi", 6, 6) + pointer
    assert b"".join(framers.client.feed(cut[:8])) == b""
    assert b"".join(framers.client.feed(pointer)) == cut
    assert [seen.payload for seen in to_desktop.seen] == [pointer]
    assert not framers.client.input_seen
    assert framers.client.feed(pointer) == [pointer] and framers.client.buffered == 0
    qemu, _, _ = session()
    assert qemu.client.feed(b"\xff") == []
    with pytest.raises(rfb.RfbError, match="QEMU client message 5"):  # its sub-type, not a pointer event
        qemu.client.feed(pointer)


def test_set_encodings_is_filtered_to_what_can_be_framed():
    framers, _, _ = session()
    asked = [
        50,
        7,
        -260,
        21,
        16,
        0x574D5664,
        -312,
        -313,
        -309,
        -316,
        0,
        -223,
        -224,
        -239,
        -258,
        -261,
        -307,
        -308,
    ]
    asked += [-1063131698, -32 + 5, -256 + 2]
    kept = [7, -260, 16, 0, -223, -224, -239, -258, -261, -307, -308, -1063131698, -27, -254]
    out = feed_bytewise(framers.client, struct.pack(f">BxH{len(asked)}i", 2, len(asked), *asked))
    assert out == struct.pack(f">BxH{len(kept)}i", 2, len(kept), *kept)


def test_a_client_pixel_format_changes_rectangle_sizes():
    framers, _, _ = session()
    framers.client.feed(b"\x00\x00\x00\x00" + PIXEL_FORMAT_16)
    message = update(rect(0, 0, 2, 2, rfb.ENCODING_RAW) + bytes(2 * 2 * 2)) + b"\x02"
    assert b"".join(framers.server.feed(message)) == message
    assert framers.server.buffered == 0


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (b"\x07", "unsupported"),  # not a client message type
        (b"\xf8\x00\x00\x00", "unsupported"),  # Fence: never negotiated through the gateway
        (struct.pack(">BxH", 2, 5000), "oversized"),
        (struct.pack(">B3xi", 6, 2 << 20), "oversized"),
        (struct.pack(">B3xi", 6, -(2 << 20)), "oversized"),
        (
            b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 24, 24, 0, 1, 255, 255, 255, 16, 8, 0),
            "malformed",
        ),
        (struct.pack(">BB", 255, 9), "unsupported"),
        (struct.pack(">BBH", 255, 1, 7), "malformed"),
    ],
)
def test_bad_client_messages_are_refused_with_a_kind(message, kind):
    framers, _, _ = session()
    with pytest.raises(rfb.RfbError) as refused:
        framers.client.feed(message)
    assert refused.value.kind == kind and refused.value.reason


# -- server messages -----------------------------------------------------------------------------------

BPP = 4


def hextile_rect() -> bytes:
    # 20x17: four tiles (16x16, 4x16, 16x1, 4x1) exercising raw, colours and both kinds of subrects.
    tiles = [
        b"\x01" + bytes(16 * 16 * BPP),  # raw
        b"\x02" + bytes(BPP),  # background only
        b"\x0e" + bytes(BPP) + bytes(BPP) + b"\x02" + bytes(2 * 2),  # bg, fg, 2 subrects
        b"\x18" + b"\x01" + bytes(BPP + 2),  # 1 coloured subrect
    ]
    return rect(0, 0, 20, 17, rfb.ENCODING_HEXTILE) + b"".join(tiles)


def tight_rects() -> list[bytes]:
    tpixel = 3
    enc = rfb.ENCODING_TIGHT
    return [
        rect(0, 0, 8, 8, enc) + b"\x80" + bytes(tpixel),  # fill
        rect(0, 0, 8, 8, enc) + b"\x90" + b"\x85\x01" + bytes(133),  # JPEG, two-byte compact length
        rect(0, 0, 2, 1, enc) + b"\x00" + bytes(2 * tpixel),  # basic copy, < 12 bytes: no length
        rect(0, 0, 8, 8, enc) + b"\x40\x00" + b"\x0a" + bytes(10),  # explicit copy filter, zlib data
        rect(0, 0, 8, 8, enc) + b"\x40\x01\x01" + bytes(2 * tpixel) + bytes(8),  # 2-colour palette, 8 bytes
        rect(0, 0, 8, 8, enc) + b"\x40\x01\x03" + bytes(4 * tpixel) + b"\x40" + bytes(64),  # 4 colours
        rect(0, 0, 8, 8, enc)
        + b"\x40\x02"
        + b"\xff\xff\x01"
        + bytes(127 + (127 << 7) + (1 << 14)),  # gradient, 3-byte length
        rect(0, 0, 8, 8, rfb.ENCODING_TIGHT_PNG) + b"\xa0" + b"\x05" + bytes(5),  # PNG
    ]


SERVER_RECTS = {
    "Raw": rect(0, 0, 3, 2, rfb.ENCODING_RAW) + bytes(3 * 2 * BPP),
    "CopyRect": rect(0, 0, 3, 2, rfb.ENCODING_COPY_RECT) + struct.pack(">HH", 5, 5),
    "RRE": rect(0, 0, 9, 9, rfb.ENCODING_RRE) + struct.pack(">I", 2) + bytes(BPP) + bytes(2 * (BPP + 8)),
    "Hextile": hextile_rect(),
    "Zlib": rect(0, 0, 9, 9, rfb.ENCODING_ZLIB) + struct.pack(">I", 7) + bytes(7),
    "ZRLE": rect(0, 0, 9, 9, rfb.ENCODING_ZRLE) + struct.pack(">I", 300) + bytes(300),
    "Tight": b"".join(tight_rects()),
    "Cursor": rect(0, 0, 9, 2, rfb.PSEUDO_CURSOR) + bytes(9 * 2 * BPP) + bytes(2 * 2),
    "DesktopSize": rect(0, 0, 800, 600, rfb.PSEUDO_DESKTOP_SIZE),
    "ExtendedDesktopSize": rect(0, 0, 800, 600, rfb.PSEUDO_EXTENDED_DESKTOP_SIZE) + b"\x02\0\0\0" + bytes(32),
    "DesktopName": rect(0, 0, 0, 0, rfb.PSEUDO_DESKTOP_NAME) + struct.pack(">I", 4) + b"name",
    "QEMU extended key": rect(0, 0, 0, 0, rfb.PSEUDO_QEMU_EXTENDED_KEY_EVENT),
    "QEMU LED": rect(0, 0, 0, 0, rfb.PSEUDO_QEMU_LED_EVENT) + b"\x07",
}


@pytest.mark.parametrize("name", list(SERVER_RECTS))
def test_framebuffer_update_rectangles_pass_and_the_next_message_is_found(name):
    framers, _, to_client = session()
    rects = SERVER_RECTS[name]
    count = len(tight_rects()) if name == "Tight" else 1
    stream = update(rects, count=count) + struct.pack(">B3xi", 3, 2) + b"hi"
    assert feed_bytewise(framers.server, stream) == stream
    assert [cut.payload for cut in to_client.seen] == [b"hi"]  # found after the pixels, not inside them


def test_last_rect_ends_an_update_of_unknown_length():
    framers, _, _ = session()
    stream = update(SERVER_RECTS["CopyRect"], rect(0, 0, 0, 0, rfb.PSEUDO_LAST_RECT), count=0xFFFF) + b"\x02"
    assert b"".join(framers.server.feed(stream)) == stream
    assert framers.server.buffered == 0


def test_colour_map_bell_and_qemu_audio():
    framers, _, _ = session()
    stream = struct.pack(">BxHH", 1, 0, 2) + bytes(12) + b"\x02"
    stream += struct.pack(">BBH", 255, 1, 1) + struct.pack(">BBHI", 255, 1, 2, 6) + bytes(6)
    assert feed_bytewise(framers.server, stream) == stream


def test_pixel_data_is_passed_on_as_it_arrives_not_held():
    framers, _, _ = session()
    head = update(rect(0, 0, 1000, 1000, rfb.ENCODING_RAW))
    assert b"".join(framers.server.feed(head + bytes(1000))) == head + bytes(1000)
    assert framers.server.buffered == 0


@pytest.mark.parametrize(
    "message",
    [
        b"\x09",
        update(rect(0, 0, 1, 1, 50)),  # H.264: filtered out of SetEncodings, so never expected
        update(rect(0, 0, 1, 1, rfb.ENCODING_TIGHT)) + b"\xb0",  # no such Tight method
        update(rect(0, 0, 1, 1, rfb.ENCODING_TIGHT)) + b"\xa0",  # PNG is TightPNG's alone
        update(rect(0, 0, 1, 1, rfb.ENCODING_TIGHT)) + b"\x40\x03",  # no such filter
        struct.pack(">BB", 255, 0),
    ],
)
def test_bad_server_messages_are_refused(message):
    framers, _, _ = session()
    with pytest.raises(rfb.RfbError):
        framers.server.feed(message)


def test_server_cut_text_over_the_limit_is_dropped_in_pieces_with_its_hash():
    framers, _, to_client = session(max_message=1 << 16)
    text = b"x" * (1 << 20)
    assert framers.server.feed(struct.pack(">B3xi", 3, len(text))) == []
    out = b"".join(framers.server.feed(text)) + b"".join(framers.server.feed(b"\x02"))
    assert out == b"\x02"
    [cut] = to_client.seen
    assert (cut.complete, cut.size, cut.payload) == (False, len(text), b"")
    assert framers.server.buffered == 0


# -- Extended Clipboard --------------------------------------------------------------------------------


def test_provide_round_trips():
    payload = rfb.build_provide({rfb.CLIPBOARD_TEXT: b"hello\0", 1 << 2: b"<b>hello</b>\0"})
    data = rfb.parse_provide(payload, 1024)
    assert data.formats == {rfb.CLIPBOARD_TEXT: b"hello\0", 1 << 2: b"<b>hello</b>\0"}
    assert data.flags & rfb.CLIPBOARD_PROVIDE


def test_a_zlib_bomb_is_refused_within_a_fixed_memory_bound():
    # 1 GiB of zeros deflates to about 1 MiB; inflating it whole would need the gigabyte.
    deflater = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    compressed = b"".join(deflater.compress(chunk) for _ in range(1024)) + deflater.flush()
    payload = struct.pack(">I", rfb.CLIPBOARD_PROVIDE | rfb.CLIPBOARD_TEXT) + compressed
    tracemalloc.start()
    try:
        with pytest.raises(rfb.ClipboardTooLarge):
            rfb.parse_provide(payload, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"inflating used {peak} bytes"


@pytest.mark.parametrize(
    "payload",
    [b"\x10\x00", struct.pack(">I", rfb.CLIPBOARD_PROVIDE | 1) + b"not zlib"],
)
def test_malformed_provides_are_refused(payload):
    with pytest.raises(rfb.RfbError):
        rfb.parse_provide(payload, 1024)


def test_a_provide_whose_sizes_overrun_its_data_is_refused():
    payload = struct.pack(">I", rfb.CLIPBOARD_PROVIDE | 1) + zlib.compress(struct.pack(">I", 100) + b"short")
    with pytest.raises(rfb.RfbError, match="truncated"):
        rfb.parse_provide(payload, 1024)
