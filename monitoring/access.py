"""Who may read /metrics: a bearer token when one is configured, else clients from allowed networks.

The broker and the gateway serve /metrics on their public ports, where anyone who reaches the portal
could otherwise read host names, pool sizes and login counts. Prometheus sends the token as
`Authorization: Bearer …` (its scrape config's `authorization.credentials`, docs/monitoring.md).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Without a token, only this machine may scrape.
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class MetricsAccessSettings(BaseModel):
    """Who may read /metrics: the same two keys in `[broker]` and `[gateway]`."""

    metrics_token: SecretStr | None = Field(
        None,
        min_length=16,
        description="bearer token Prometheus must send to read /metrics (unset: only metrics_networks may)",
    )
    metrics_networks: list[IPvAnyNetwork] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        validate_default=True,
        description="client networks that may read /metrics when no metrics_token is set (default: this machine)",
    )


def scrape_allowed(client_ip: str, authorization: str | None, token: str | None, networks: Sequence) -> bool:
    """True when the scraper shows the configured token, or (no token configured) comes from `networks`."""
    if token:
        scheme, _, credentials = (authorization or "").partition(" ")
        # compare_digest: the time to refuse does not tell how much of a guessed token was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        )
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in network for network in networks)
