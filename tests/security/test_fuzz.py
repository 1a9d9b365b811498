"""Property-based fuzzing (hypothesis) of the parsers that take input from the network.

The console token parser and the websockify log masking, the trusted-proxy headers (X-Forwarded-For and
X-Forwarded-Proto), the certificate a proxy's header carries, the gateway's WebSocket relay, and its RFB
framing (gateway/rfb.py: both directions, the browser's handshake, Extended Clipboard payloads and the
clipboard policy): none may raise on any input other than its own clean refusal, and each keeps its
promise (a token never survives masking; the address is the peer's or one the header names; the desktop
receives exactly what the browser sent; a framer forwards only bytes it was given).

`make test` runs a bounded number of examples (VDI_FUZZ_EXAMPLES, default 150); `make fuzz` runs many
more. A failure hypothesis finds is printed with its smallest input: add it as an @example here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import string
import zlib
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.db.tokens import TOKEN_SHAPE, ConsolePolicy, TokenRefused, consume_token
from broker.web.base import mask_uri, same_site_path
from broker.web.client_address import client_address, client_scheme
from gateway import rfb
from gateway.clipboard import TO_CLIENT, TO_DESKTOP, ClipboardFilter
from gateway.relay import close_reason, origin_allowed, token_from_query
from gateway.websockify_plugin import _mask_tokens
from sso.base import AuthError
from sso.x509 import parse_certificate
from tests.fixtures.gateway import (
    RFB_BANNER,
    SERVER_INIT,
    FakeVncServer,
    receive_until,
    run_async,
    running_gateway,
)

EXAMPLES = int(os.environ.get("VDI_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.9/32")]
TOKEN_CHARS = string.ascii_letters + string.digits + "-_"
tokens = st.text(TOKEN_CHARS, min_size=43, max_size=43)
addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


# -- console tokens and their masking -------------------------------------------------------------------


@FUZZ
@given(token=st.one_of(st.none(), st.text(max_size=400), tokens))
def test_the_token_parser_refuses_or_answers_and_never_raises_anything_else(broker_db, token):
    with broker_db.transaction() as session:
        try:
            consume_token(session, token)
        except TokenRefused as exc:
            assert exc.reason  # a reason safe to log, never the token
            assert len(token or "") < 8 or token not in exc.reason


@FUZZ
@given(token=tokens, prefix=st.text(max_size=30), encode=st.sampled_from(["plain", "name", "path"]))
@example(token="A" * 43, prefix="GET /", encode="name")
def test_a_token_never_survives_the_websockify_log_masking(token, prefix, encode):
    query = {
        "plain": f"?token={token}",
        "name": f"?%74oken={token}",
        "path": f"?path={quote('/?token=' + token, safe='')}",
    }[encode]
    assert token not in _mask_tokens(f"{prefix}{query} HTTP/1.1")


@FUZZ
@given(uri=st.text(max_size=300))
def test_query_parsing_of_console_urls_never_raises(uri):
    found = token_from_query(uri)
    assert found is None or isinstance(found, str)
    masked = mask_uri(uri)
    assert masked.split("?", 1)[0] == uri.split("?", 1)[0]


@FUZZ
@given(token=tokens)
def test_every_minted_token_has_the_shape_the_parser_accepts(token):
    assert TOKEN_SHAPE.match(token)


# -- trusted-proxy headers --------------------------------------------------------------------------------


@FUZZ
@given(peer=addresses, header=st.one_of(st.none(), st.text(max_size=200), st.lists(addresses).map(", ".join)))
def test_the_client_address_is_the_peer_or_an_address_the_header_names(peer, header):
    answer = client_address(peer, header, TRUSTED)
    assert answer == peer or (header is not None and answer in header)
    ipaddress.ip_address(answer)
    if not any(ipaddress.ip_address(peer) in network for network in TRUSTED):
        assert answer == peer  # nobody else's header is believed


@FUZZ
@given(
    peer=addresses,
    protocol=st.sampled_from(["http", "https"]),
    header=st.one_of(st.none(), st.text(max_size=50)),
)
def test_the_client_scheme_is_http_or_https_and_only_a_trusted_proxy_changes_it(peer, protocol, header):
    answer = client_scheme(peer, protocol, header, TRUSTED)
    assert answer in ("http", "https")
    if not any(ipaddress.ip_address(peer) in network for network in TRUSTED):
        assert answer == protocol


@FUZZ
@given(origin=st.text(max_size=80))
def test_origin_checks_never_raise_and_allow_only_listed_origins(origin):
    allowed = origin_allowed(origin, ["https://portal.example"])
    assert allowed in (True, False)
    if allowed:
        assert origin.lower().rstrip("/").startswith("https://portal.example")


@FUZZ
@given(text=st.text(max_size=300))
def test_close_reasons_fit_a_control_frame(text):
    assert len(close_reason(text).encode("utf-8")) <= 123


@FUZZ
@given(path=st.text(max_size=120))
@example(path="//evil.example/x")
@example(path="/\\evil.example")
def test_language_links_stay_on_this_site(path):
    link = same_site_path(path)
    assert link.startswith("/") and not link.startswith(("//", "/\\"))
    assert "\\" not in link and '"' not in link and "<" not in link


# -- the certificate in a proxy's header --------------------------------------------------------------


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda body: b"-----BEGIN CERTIFICATE-----\n" + body),
        st.text(max_size=300).map(lambda text: text.encode("utf-8", "replace")),
    )
)
def test_a_certificate_header_is_parsed_or_refused_with_a_reason(data):
    try:
        parse_certificate(data)
    except AuthError as exc:
        assert exc.reason.startswith("malformed certificate")


# -- the gateway's WebSocket relay ------------------------------------------------------------------------


@settings(
    max_examples=max(5, EXAMPLES // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(messages=st.lists(st.binary(min_size=1, max_size=70_000), min_size=1, max_size=8))
def test_the_relay_delivers_exactly_what_the_browser_sent(console_db, gateway_config, messages):
    fake_vnc = FakeVncServer()  # one desktop per example: a server serves once
    token = console_db.issue(console_db.add_session(vnc_port=fake_vnc.port))
    sent = b"".join(messages)

    async def scenario():
        async with fake_vnc.serving(), running_gateway(gateway_config, console_db.db) as gateway:
            conn = await gateway.connect(token)
            await receive_until(conn, RFB_BANNER)
            for message in messages:
                conn.write_message(message, binary=True)
            # The fake desktop echoes: everything sent comes back, in order, through the relay.
            echoed = await receive_until(conn, sent, timeout_s=30)
            conn.close()
            return echoed

    echoed = run_async(scenario())
    assert echoed == sent
    assert bytes(fake_vnc.received) == sent


# -- the gateway's RFB framing ----------------------------------------------------------------------------

MESSAGE_LIMIT = 4096
rfb_streams = st.lists(st.binary(max_size=300), max_size=12)
# Plausible starts make hypothesis reach deep into the parsers, not only refuse the first byte.
client_starts = st.sampled_from(
    [b"", b"\x02\x00\x00\x03", b"\x06\x00\x00\x00\xff\xff\xff\xf0", b"\xff\x00", b"\xfb"]
)
server_starts = st.sampled_from(
    [
        b"",
        b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x04\x00\x04\x00\x00\x00\x07",
        b"\x00\x00\x00\x01",
        b"\x03\x00\x00\x00",
    ]
)


def _policy_filter(direction: str) -> ClipboardFilter:
    return ClipboardFilter(
        ConsolePolicy(clipboard_max_bytes=64, clipboard_text_only=True), direction, lambda e: None
    )


def _framers() -> rfb.RfbSession:
    return rfb.RfbSession(
        SERVER_INIT,
        max_client_message=MESSAGE_LIMIT,
        max_server_cut_text=MESSAGE_LIMIT,
        to_desktop=_policy_filter(TO_DESKTOP),
        to_client=_policy_filter(TO_CLIENT),
    )


def _feed_until_refused(framer: rfb.Framer, chunks: list[bytes]) -> int:
    """Feed chunk by chunk; a refusal ends the stream, as it ends the tunnel. Returns bytes forwarded."""
    forwarded = 0
    try:
        for chunk in chunks:
            forwarded += sum(len(piece) for piece in framer.feed(chunk))
    except rfb.RfbError as exc:
        assert exc.kind in ("malformed", "oversized", "unsupported") and exc.reason
    assert framer.buffered <= MESSAGE_LIMIT + 300 + 64 * 1024
    return forwarded


@FUZZ
@given(start=client_starts, chunks=rfb_streams)
@example(start=b"\x06\x00\x00\x00\xff\xff\xff\xf0", chunks=[b"\x10\x00\x00\x01" + b"x" * 12])
def test_client_framing_forwards_messages_or_refuses_cleanly(start, chunks):
    framers = _framers()
    forwarded = _feed_until_refused(framers.client, [start, *chunks])
    # Filtering SetEncodings and the clipboard policy only ever shorten what passes.
    assert forwarded <= len(start) + sum(len(chunk) for chunk in chunks)


@FUZZ
@given(start=server_starts, chunks=rfb_streams)
def test_server_framing_forwards_messages_or_refuses_cleanly(start, chunks):
    _feed_until_refused(_framers().server, [start, *chunks])


@FUZZ
@given(chunks=rfb_streams)
@example(chunks=[b"RFB 003.008\n\x01\x01"])
def test_the_browser_handshake_completes_or_refuses_cleanly(chunks):
    handshake = rfb.BrowserHandshake(SERVER_INIT)
    try:
        for chunk in chunks:
            handshake.feed(chunk)
    except rfb.RfbError as exc:
        assert exc.reason
    assert not handshake.done or handshake.shared in (True, False)


@FUZZ
@given(
    flags=st.integers(0, 0xFFFFFFFF),
    body=st.one_of(
        st.binary(max_size=200),
        st.lists(st.binary(max_size=40), max_size=5).map(
            lambda parts: zlib.compress(b"".join(len(p).to_bytes(4, "big") + p for p in parts))
        ),
    ),
)
def test_extended_clipboard_payloads_parse_or_refuse_cleanly(flags, body):
    payload = flags.to_bytes(4, "big") + body
    try:
        data = rfb.parse_provide(payload, 256)
    except (rfb.RfbError, rfb.ClipboardTooLarge):
        return
    assert data.inflated <= 256
    for direction in (TO_DESKTOP, TO_CLIENT):
        with contextlib.suppress(rfb.RfbError):
            _policy_filter(direction)(rfb.CutText(True, payload, len(payload)))


@pytest.mark.parametrize("reason", ["", "x" * 500, "한글" * 80])
def test_close_reason_examples(reason):
    assert len(close_reason(reason).encode("utf-8")) <= 123
