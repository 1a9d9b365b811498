"""The client's address: the TCP peer, or the address a trusted reverse proxy reports in X-Forwarded-For.

Lockout per source, the TOTP center-network policy, pending logins, audit rows and session records all key
on this address, so a client must not be able to choose it. X-Forwarded-For is believed only when the TCP
peer is one of `broker.trusted_proxies`; then the answer is the right-most address in the header that is not
itself a trusted proxy (each proxy appends the address it saw, so entries left of that one are whatever the
client sent and prove nothing). Tornado's own `xheaders` option believes the header from anyone: it stays off.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Sequence

from pydantic import IPvAnyNetwork

from monitoring.metrics import FORWARDED_FOR_IGNORED, ForwardedForIgnored

log = logging.getLogger("broker.web.client_address")

HEADER = "X-Forwarded-For"
# An X-Forwarded-For line holds one address per proxy hop; anything longer is not one.
MAX_HEADER_CHARS = 4096

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


# Every request parses its TCP peer (the proxy, one address) and its X-Forwarded-For entries, two or three
# times over (client address, scheme, request id): ipaddress parsing showed in the brokers' profile under
# a logon storm. Addresses are immutable, so parsed ones are kept, a bounded number.
@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def is_trusted(address: Address | None, trusted: Sequence[IPvAnyNetwork]) -> bool:
    return address is not None and any(address in network for network in trusted)


def peer_is_trusted(peer: str, trusted: Sequence[IPvAnyNetwork]) -> bool:
    """Whether the TCP peer is one of `broker.trusted_proxies`."""
    return is_trusted(_parse(peer), trusted)


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[IPvAnyNetwork]) -> str:
    """The client's address for a request from `peer` carrying `forwarded_for` (None: no header)."""
    if forwarded_for is None:
        return peer
    if not is_trusted(_parse(peer), trusted):
        # Browsers behind a corporate proxy send the header too, so this is routine: debug, not warning.
        log.debug("ignored %s from untrusted address %s", HEADER, peer)
        FORWARDED_FOR_IGNORED.labels(reason=ForwardedForIgnored.UNTRUSTED_PEER.value).inc()
        return peer
    if len(forwarded_for) > MAX_HEADER_CHARS:
        log.warning("ignored an oversized %s from trusted proxy %s", HEADER, peer)
        FORWARDED_FOR_IGNORED.labels(reason=ForwardedForIgnored.MALFORMED.value).inc()
        return peer
    address = None
    for entry in reversed(forwarded_for.split(",")):
        address = _parse(entry)
        if address is None:
            # Our proxy appends a valid address itself, so garbage here means a misconfigured proxy.
            log.warning(
                "ignored malformed %s from trusted proxy %s: entry %r", HEADER, peer, entry.strip()[:64]
            )
            FORWARDED_FOR_IGNORED.labels(reason=ForwardedForIgnored.MALFORMED.value).inc()
            return peer
        if not is_trusted(address, trusted):
            return str(address)
    return str(address)  # every hop is a trusted proxy: the left-most one is where the request began


PROTO_HEADER = "X-Forwarded-Proto"


def client_scheme(
    peer: str, protocol: str, forwarded_proto: str | None, trusted: Sequence[IPvAnyNetwork]
) -> str:
    """ "https" or "http" as the browser used it: the TLS-terminating proxy's X-Forwarded-Proto when the
    peer is a trusted proxy, else the broker's own listener's protocol (a client cannot choose it)."""
    if forwarded_proto is None or not is_trusted(_parse(peer), trusted):
        return protocol
    # A chain of proxies appends; the left-most value is what the first proxy, facing the browser, saw.
    first = forwarded_proto.split(",", 1)[0].strip().lower()
    return first if first in ("http", "https") else protocol
