"""Regression tests for findings 3 and 6 of the security review (issue 11): where the gateway connects.

3. Cross-desktop display with the "direct" route: a remote host's loopback display made the gateway dial its
   own loopback, and the route was looked up again when the token was used.
6. Host URIs accepted any query string (`command=`, `no_verify=1`, `keyfile=`, `socket=`), so an admin API
   call could make the broker run a program or skip host-key checks.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from broker.db.models import ConsoleToken, Desktop, Host
from broker.db.tokens import consume_token
from tests.fixtures.broker import COOKIE_SECRET, TEST_IMAGE, BrokerClient, make_broker_config, seed_session
from vdi.config import ConfigError, parse_config


@pytest.fixture
def config(tmp_path):
    return make_broker_config(
        tmp_path / "broker.db",  # the file the broker_db fixture opens
        broker={
            "cookie_secret": COOKIE_SECRET,
            "gateway_url": "ws://127.0.0.1:9/ws",
            "admin_groups": ["mois"],
        },
    )


@pytest.fixture
def admin(broker_server, config, fake_authenticator, unreachable_providers) -> BrokerClient:
    url = broker_server(
        config,
        authenticator=fake_authenticator,
        providers=unreachable_providers,
        image_resolver=lambda p: TEST_IMAGE,
    )
    client = BrokerClient(url)
    assert client.login("kimmj").status == 200  # group mois: an administrator here
    return client


def hosts_in(db) -> int:
    with db.transaction() as session:
        return session.scalar(select(func.count()).select_from(Host))


@pytest.mark.parametrize(
    "query",
    [
        "command=/bin/sh",
        "no_verify=1",
        "keyfile=/root/.ssh/id_rsa",
        "socket=/run/other.sock",
        "netcat=/tmp/nc",
    ],
)
def test_finding_6_a_host_uri_with_a_dangerous_parameter_is_refused(admin, broker_db, query):
    before = hosts_in(broker_db)
    response = admin.post(
        "/api/v1/hosts", json={"name": "hv9", "uri": f"qemu+ssh://root@hv9.example/system?{query}"}
    )
    assert response.status == 400
    assert response.json()["error"]["field"] == "uri"
    assert query.split("=")[0] in response.json()["error"]["message"]
    assert hosts_in(broker_db) == before


def test_finding_3_a_remote_host_with_a_direct_route_to_its_loopback_is_refused_at_add(admin, broker_db):
    before = hosts_in(broker_db)
    response = admin.post(
        "/api/v1/hosts",
        json={"name": "hv9", "uri": "qemu+tcp://hv9.example/system", "console_access": "direct"},
    )
    assert (response.status, response.json()["error"]["field"]) == (400, "console_access")
    assert hosts_in(broker_db) == before


def test_finding_3_the_configuration_file_is_checked_alike(tmp_path):
    data = {
        "broker": {"cookie_secret": COOKIE_SECRET},
        "ldap": {"user_base": "ou=people,dc=x", "group_base": "ou=groups,dc=x"},
        "hosts": [{"name": "hv9", "uri": "qemu+tcp://hv9.example/system", "console_access": "direct"}],
    }
    with pytest.raises(ConfigError, match=r"hosts\[0\]\.console_access: direct needs"):
        parse_config(data)


def test_finding_3_no_token_for_a_loopback_display_of_a_remote_host(admin, broker_db):
    """A host row from before the check (or changed in the database) still gets no token: 503 naming it."""
    session_id, desktop_id = seed_session(broker_db, "kimmj", "mois-office", vnc_port=5999)
    with broker_db.transaction() as session:
        session.add(Host(name="hv9", uri="qemu+tcp://hv9.example/system", console_access="direct"))
        session.flush()
        session.execute(update(Desktop).where(Desktop.id == desktop_id).values(host_name="hv9"))
    response = admin.post(f"/api/v1/sessions/{session_id}/console-token")
    assert response.status == 503
    assert response.json()["error"]["reason"] == "console_route_unusable"
    assert "hv9" in response.json()["error"]["message"]
    with broker_db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(ConsoleToken)) == 0


def test_finding_3_the_route_is_the_one_decided_when_the_token_was_issued(admin, broker_db):
    """A change to the host after issue does not redirect a token already handed out (Nova's model)."""
    session_id, _ = seed_session(broker_db, "kimmj", "mois-office")
    token = admin.post(f"/api/v1/sessions/{session_id}/console-token").json()["token"]
    with broker_db.transaction() as session:
        session.execute(
            update(Host)
            .where(Host.name == "local")
            .values(console_access="ssh", ssh_address="root@evil.example:22")
        )
    with broker_db.transaction() as session:
        target = consume_token(session, token)
    assert (target.route, target.ssh, target.host) == ("direct", None, "127.0.0.1")
