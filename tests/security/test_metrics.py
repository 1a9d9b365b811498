"""Regression tests for finding 8 of the security review (issue 11): /metrics was open on the portal and
gateway ports to anyone who could reach them."""

from __future__ import annotations

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from gateway.config import GatewaySettings
from tests.fixtures.broker import make_broker_config
from tests.fixtures.gateway import run_async, running_gateway
from tests.fixtures.login_security import SourceClient

TOKEN = "scrape-token-0123456789abcdef"
OTHER = "127.0.0.9"  # a client that is not this machine's 127.0.0.1


@pytest.fixture
def broker_with(broker_server, tmp_path, fake_authenticator):
    def start(**broker) -> str:
        config = make_broker_config(
            tmp_path / "broker.db",
            broker={"cookie_secret": "metrics-tests-cookie-secret-0123456789", **broker},
        )
        return broker_server(config, authenticator=fake_authenticator, providers={})

    return start


def test_finding_8_metrics_answer_only_allowed_networks_without_a_token(broker_with):
    url = broker_with(metrics_networks=["127.0.0.1/32"])
    assert SourceClient(url, "127.0.0.1").get("/metrics").status == 200
    refused = SourceClient(url, OTHER).get("/metrics")
    assert refused.status == 403 and b"vdi_" not in refused.body


def test_finding_8_a_client_behind_a_trusted_proxy_is_judged_by_its_own_address(broker_with):
    """Through a reverse proxy on the same machine the peer is loopback; the client is not."""
    url = broker_with(trusted_proxies=[f"{OTHER}/32"])
    response = SourceClient(url, OTHER).get("/metrics", headers={"X-Forwarded-For": "198.51.100.7"})
    assert response.status == 403


def test_finding_8_with_a_token_only_the_token_opens_metrics(broker_with):
    url = broker_with(metrics_token=TOKEN)
    client = SourceClient(url, OTHER)
    assert client.get("/metrics").status == 403
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"}).status == 403
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status == 200 and b"vdi_logins_total" in answer.body


def test_finding_8_the_gateway_asks_for_its_token_too(console_db, gateway_config):
    gateway = GatewaySettings.model_validate({**gateway_config.gateway.model_dump(), "metrics_token": TOKEN})
    config = gateway_config.model_copy(update={"gateway": gateway})

    async def scenario():
        async with running_gateway(config, console_db.db) as running:
            client = AsyncHTTPClient()
            with pytest.raises(HTTPClientError) as refused:
                await client.fetch(running.http_url + "/metrics")
            assert refused.value.code == 403
            answer = await client.fetch(
                running.http_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert b"vdi_gateway_tunnels_open" in answer.body

    run_async(scenario())
