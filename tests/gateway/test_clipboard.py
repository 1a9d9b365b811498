"""gateway/clipboard.py: each policy on classic and Extended Clipboard transfers, and what it reports."""

from __future__ import annotations

import hashlib
import struct

import pytest

from broker.db.tokens import ConsolePolicy
from gateway import rfb
from gateway.clipboard import TO_CLIENT, TO_DESKTOP, ClipboardEvent, ClipboardFilter

HTML = 1 << 2


def run(policy: ConsolePolicy, direction: str, cut: rfb.CutText) -> tuple[bytes | None, list[ClipboardEvent]]:
    events: list[ClipboardEvent] = []
    return ClipboardFilter(policy, direction, events.append)(cut), events


def classic(text: bytes) -> rfb.CutText:
    return rfb.CutText(False, text, len(text))


def extended(payload: bytes) -> rfb.CutText:
    return rfb.CutText(True, payload, len(payload))


def provided(message: bytes) -> dict[int, bytes]:
    return rfb.parse_provide(message[8:], 1 << 20).formats


@pytest.mark.parametrize(
    ("mode", "to_desktop", "to_client"),
    [("both", True, True), ("to_desktop", True, False), ("to_client", False, True), ("none", False, False)],
)
def test_each_mode_each_way(mode, to_desktop, to_client):
    for direction, allowed in ((TO_DESKTOP, to_desktop), (TO_CLIENT, to_client)):
        message, events = run(ConsolePolicy(clipboard=mode), direction, classic(b"text"))
        assert (message is not None) == allowed
        assert [event.result for event in events] == ([] if allowed else ["blocked"])


def test_classic_text_is_cut_to_the_limit_and_the_original_is_hashed():
    message, [event] = run(ConsolePolicy(clipboard_max_bytes=4), TO_CLIENT, classic(b"abcdefgh"))
    assert message == struct.pack(">B3xi", rfb.SERVER_CUT_TEXT, 4) + b"abcd"
    assert event == ClipboardEvent(
        TO_CLIENT, "truncated", "too_large", 8, hashlib.sha256(b"abcdefgh").hexdigest()
    )


@pytest.mark.parametrize(
    "flags",
    [
        rfb.CLIPBOARD_CAPS | rfb.CLIPBOARD_TEXT,
        # QEMU's capabilities: every action it supports, provide included, plus the caps bit.
        rfb.CLIPBOARD_CAPS | rfb.CLIPBOARD_PROVIDE | rfb.CLIPBOARD_NOTIFY | rfb.CLIPBOARD_REQUEST | 1,
    ],
)
def test_extended_messages_without_content_pass_even_when_blocked(flags):
    caps = struct.pack(">II", flags, 0)
    message, events = run(ConsolePolicy(clipboard="none"), TO_DESKTOP, extended(caps))
    assert message == struct.pack(">B3xi", rfb.CLIENT_CUT_TEXT, -len(caps)) + caps
    assert events == []


def test_an_extended_provide_is_blocked_with_the_hash_of_its_content():
    payload = rfb.build_provide({rfb.CLIPBOARD_TEXT: b"secret\0"})
    message, [event] = run(ConsolePolicy(clipboard="to_client"), TO_DESKTOP, extended(payload))
    assert message is None
    # The text as copied, without the NUL terminator: the same size and hash as classic cut text of it.
    assert (event.result, event.size, event.sha256) == ("blocked", 6, hashlib.sha256(b"secret").hexdigest())


def test_text_only_removes_other_formats():
    payload = rfb.build_provide({rfb.CLIPBOARD_TEXT: b"hi\0", HTML: b"<i>hi</i>\0"})
    message, [event] = run(ConsolePolicy(clipboard_text_only=True), TO_CLIENT, extended(payload))
    assert provided(message) == {rfb.CLIPBOARD_TEXT: b"hi\0"}
    assert (event.result, event.reason) == ("truncated", "not_text")


def test_extended_text_is_cut_at_a_character_boundary():
    text = "가나다라".encode() + b"\0"  # 3 bytes a character
    message, [event] = run(
        ConsolePolicy(clipboard_max_bytes=7), TO_DESKTOP, extended(rfb.build_provide({1: text}))
    )
    assert provided(message) == {rfb.CLIPBOARD_TEXT: "가나".encode() + b"\0"}
    assert (event.result, event.size, event.sha256) == (
        "truncated",
        len(text) - 1,
        hashlib.sha256("가나다라".encode()).hexdigest(),
    )


def test_a_provide_inflating_past_the_limit_is_blocked_unread():
    payload = rfb.build_provide({rfb.CLIPBOARD_TEXT: bytes(10 << 20)})
    message, [event] = run(ConsolePolicy(clipboard_max_bytes=1024), TO_CLIENT, extended(payload))
    assert message is None
    assert (event.reason, event.size, event.sha256) == (
        "too_large",
        len(payload),
        hashlib.sha256(payload).hexdigest(),
    )


def test_a_cut_text_too_large_to_hold_is_reported_with_its_streamed_hash():
    digest = hashlib.sha256(b"x").digest()
    message, [event] = run(
        ConsolePolicy(), TO_CLIENT, rfb.CutText(False, b"", 99, complete=False, digest=digest)
    )
    assert message is None
    assert (event.result, event.reason, event.size, event.sha256) == (
        "blocked",
        "too_large",
        99,
        digest.hex(),
    )


def test_a_terminal_of_the_other_network_zone_gets_no_clipboard_either_way():
    crossing = ConsolePolicy(clipboard="both", zone="business", client_zone="internet")
    for direction in (TO_DESKTOP, TO_CLIENT):
        message, events = run(crossing, direction, classic(b"secret memo"))
        assert message is None
        assert [(e.result, e.reason) for e in events] == [("blocked", "cross_zone")]
    same = ConsolePolicy(clipboard="both", zone="business", client_zone="business")
    assert run(same, TO_DESKTOP, classic(b"memo"))[0] is not None
    allowed = ConsolePolicy(
        clipboard="both", zone="business", client_zone="internet", cross_zone_clipboard=True
    )
    assert run(allowed, TO_CLIENT, classic(b"memo"))[0] is not None
    away = ConsolePolicy(clipboard="both", zone="business")  # not at a center: the pool's policy alone
    assert run(away, TO_CLIENT, classic(b"memo"))[0] is not None
    stored = ConsolePolicy.of(crossing.as_json())
    assert stored.crosses_zones and stored == crossing
