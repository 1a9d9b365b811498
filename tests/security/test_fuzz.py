"""Property-based fuzzing (hypothesis) of the parsers that take input from the network.

The console token parser and the websockify log masking, the trusted-proxy headers (X-Forwarded-For and
X-Forwarded-Proto), the certificate a proxy's header carries, and the gateway's WebSocket relay: none may
raise on any input, and each keeps its promise (a token never survives masking; the address is the peer's
or one the header names; the desktop receives exactly what the browser sent).

`make test` runs a bounded number of examples (VDI_FUZZ_EXAMPLES, default 150); `make fuzz` runs many
more. A failure hypothesis finds is printed with its smallest input: add it as an @example here.
"""

from __future__ import annotations

import ipaddress
import os
import string
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from broker.db.tokens import TOKEN_SHAPE, TokenRefused, consume_token
from broker.web.base import mask_uri, same_site_path
from broker.web.client_address import client_address, client_scheme
from gateway.relay import close_reason, origin_allowed, token_from_query
from gateway.websockify_plugin import _mask_tokens
from sso.base import AuthError
from sso.x509 import parse_certificate
from tests.fixtures.gateway import RFB_BANNER, FakeVncServer, receive_until, run_async, running_gateway

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


@pytest.mark.parametrize("reason", ["", "x" * 500, "한글" * 80])
def test_close_reason_examples(reason):
    assert len(close_reason(reason).encode("utf-8")) <= 123
