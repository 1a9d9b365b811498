"""/api/v1/hosts and /api/v1/placement/explain: the host inventory for administrators.

Hosts are added for real: the broker connects to libvirt's test driver (test:///default) and
reads its capabilities; an unreachable URI is a real refused connection.
"""

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.db.models import AuditEvent, Host
from tests.fixtures.broker import (
    COOKIE_SECRET,
    TEST_IMAGE,
    BrokerClient,
    make_broker_config,
    seed_session,
)

POOLS = [
    {"name": "mois-office", "display_name": "행정안전부", "groups": ["mois"], "zone": "business"},
    {"name": "moef-office", "display_name": "기획재정부", "groups": ["moef"]},
]


@pytest.fixture
def config(tmp_path):
    return make_broker_config(
        tmp_path / "hosts.db",
        broker={
            "cookie_secret": COOKIE_SECRET,
            "gateway_url": "ws://127.0.0.1:9/ws",
            "admin_groups": ["mois"],
        },
        pools=POOLS,
    )


@pytest.fixture
def url(broker_server, config, fake_authenticator, unreachable_providers):
    return broker_server(
        config,
        authenticator=fake_authenticator,
        providers=unreachable_providers,
        image_resolver=lambda p: TEST_IMAGE,
    )


@pytest.fixture
def admin(url) -> BrokerClient:
    client = BrokerClient(url)
    client.login("kimmj")  # group mois: an administrator here
    return client


def add(admin, name, **fields):
    body = {"name": name, "uri": "test:///default", **fields}
    return admin.post("/api/v1/hosts", json=body)


def audit_actions(config):
    from broker.db import Database

    database = Database(config.database)
    try:
        with database.transaction() as session:
            return session.scalars(select(AuditEvent.action).where(AuditEvent.action.like("host.%"))).all()
    finally:
        database.close()


def test_add_connects_stores_and_lists_the_host(admin, config):
    response = add(admin, "hv1", labels={"zone": "business", "gpu": "true"}, vcpus=8, memory_mib=16384)
    assert response.status == 201, response.text
    host = response.json()
    assert (host["name"], host["health"], host["admin_state"]) == ("hv1", "up", "enabled")
    assert host["labels"] == {"zone": "business", "gpu": "true"}
    assert host["capacity"]["vcpus"] == 8 and host["capacity"]["cpu_ratio"] == 4.0
    names = [h["name"] for h in admin.get("/api/v1/hosts").json()["hosts"]]
    assert names == ["hv1", "local"]  # `local` was seeded from the config file
    assert admin.get("/api/v1/hosts/hv1").json()["labels"]["gpu"] == "true"
    assert audit_actions(config) == ["host.add"]


def test_unreachable_uri_is_400_on_uri_and_stores_nothing(admin):
    response = add(admin, "hv2", uri="qemu+tcp://127.0.0.1:1/system")
    assert response.status == 400
    error = response.json()["error"]
    assert error["field"] == "uri" and "cannot be reached" in error["message"]
    assert admin.get("/api/v1/hosts/hv2").status == 404


def test_duplicate_name_is_409(admin):
    assert add(admin, "hv1").status == 201
    response = add(admin, "hv1")
    assert (response.status, response.json()["error"]["reason"]) == (409, "host_exists")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"labels": {"Zone": "x"}}, "labels.Zone"),
        ({"labels": {"zone": "two words"}}, "labels.zone"),
        ({"labels": {"zone": "dmz"}}, "labels.zone"),  # a network zone: business or internet
        ({"vcpus": -2}, "vcpus"),
        ({"memory_mib": 0}, "memory_mib"),
        ({"cpu_ratio": -1}, "cpu_ratio"),
        ({"uri": "http://hv/"}, "uri"),
        ({"name": "Bad Name"}, "name"),
    ],
)
def test_bad_input_is_400_naming_the_field(admin, fields, field):
    body = {"name": "hv9", "uri": "test:///default", **fields}
    response = admin.post("/api/v1/hosts", json=body)
    assert response.status == 400, response.text
    assert response.json()["error"]["field"] == field
    assert admin.get("/api/v1/hosts/hv9").status == 404


def test_patch_drains_relabels_and_bumps_the_generation(admin, config):
    add(admin, "hv1")
    response = admin.request(
        "PATCH", "/api/v1/hosts/hv1", json={"admin_state": "draining", "labels": {"site": "sejong"}}
    )
    assert response.status == 200, response.text
    host = response.json()
    assert (host["admin_state"], host["labels"], host["generation"]) == ("draining", {"site": "sejong"}, 1)
    bad = admin.request("PATCH", "/api/v1/hosts/hv1", json={"admin_state": "asleep"})
    assert (bad.status, bad.json()["error"]["field"]) == (400, "admin_state")
    assert REGISTRY.get_sample_value("vdi_hosts", {"health": "up", "admin_state": "draining"}) >= 1
    assert audit_actions(config) == ["host.add", "host.change"]


def test_removing_a_host_with_desktops_needs_force(admin, url, config):
    from broker.db import Database

    add(admin, "hv1")
    database = Database(config.database)
    try:
        seed_session(database, "kimmj", "mois-office", host="hv1")
        refused = admin.request("DELETE", "/api/v1/hosts/hv1")
        assert (refused.status, refused.json()["error"]["reason"]) == (409, "host_has_desktops")
        forced = admin.request("DELETE", "/api/v1/hosts/hv1?force=true")
        assert forced.status == 200 and forced.json()["desktops_detached"] == 1
        with database.transaction() as session:
            assert session.get(Host, "hv1") is None
    finally:
        database.close()
    assert admin.request("DELETE", "/api/v1/hosts/hv1").status == 404


def test_non_admins_are_refused(url):
    client = BrokerClient(url)
    assert client.get("/api/v1/hosts").status == 401
    client.login("choijw")  # moef: not an administrator
    assert client.get("/api/v1/hosts").status == 403
    assert add(client, "hv1").status == 403
    assert client.get("/api/v1/placement/explain?pool=mois-office").status == 403


def test_explain_shows_the_filters_and_no_capacity_names_the_zone(admin):
    # `local` (from the config) has no zone label; two business hosts with room for nobody.
    for name in ("hv1", "hv2"):
        assert add(admin, name, labels={"zone": "business"}, max_desktops=0).status == 201
    explained = admin.get("/api/v1/placement/explain?pool=mois-office").json()
    assert explained["host"] is None
    assert [step["filter"] for step in explained["filters"]] == [
        "host_state",
        "desktop_kind",
        "labels",
        "network_zone",
        "capacity",
    ]
    assert explained["filters"][2]["dropped"] == ["local"]
    assert explained["reason"].startswith("all 2 hosts in zone business are full")
    connect = admin.post("/api/v1/pools/mois-office/connect")
    assert connect.status == 503
    assert "all 2 hosts in zone business are full" in connect.json()["error"]["message"]
    missing = admin.get("/api/v1/placement/explain")
    assert (missing.status, missing.json()["error"]["field"]) == (400, "pool")
    assert admin.get("/api/v1/placement/explain?pool=nope").status == 404


def test_console_route_is_stored_shown_and_changed(admin, config):
    response = add(admin, "hv1", console_access="ssh", ssh_address="vdi@10.0.0.3")
    assert response.status == 201, response.text
    assert (response.json()["console_access"], response.json()["ssh_address"]) == ("ssh", "vdi@10.0.0.3:22")
    assert add(admin, "hv2").json()["console_access"] == "direct"
    changed = admin.request(
        "PATCH", "/api/v1/hosts/hv2", json={"console_access": "ssh", "ssh_address": "[fd00::2]:2222"}
    )
    assert changed.status == 200, changed.text
    assert (changed.json()["console_access"], changed.json()["ssh_address"]) == ("ssh", "root@[fd00::2]:2222")
    listed = {h["name"]: h for h in admin.get("/api/v1/hosts").json()["hosts"]}
    assert listed["hv2"]["ssh_address"] == "root@[fd00::2]:2222"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"console_access": "telnet"}, "console_access"),
        ({"ssh_address": "root@two words"}, "ssh_address"),
        ({"ssh_address": "root@hv:0"}, "ssh_address"),
        ({"console_access": "ssh"}, "ssh_address"),  # test:/// names no SSH host to default to
    ],
)
def test_bad_console_route_is_400_naming_the_field(admin, fields, field):
    response = add(admin, "hv9", **fields)
    assert response.status == 400, response.text
    assert response.json()["error"]["field"] == field
    assert admin.get("/api/v1/hosts/hv9").status == 404


def test_patch_to_ssh_without_an_address_changes_nothing(admin):
    add(admin, "hv1")
    refused = admin.request(
        "PATCH", "/api/v1/hosts/hv1", json={"console_access": "ssh", "labels": {"site": "x"}}
    )
    assert (refused.status, refused.json()["error"]["field"]) == (400, "ssh_address")
    host = admin.get("/api/v1/hosts/hv1").json()
    assert (host["console_access"], host["labels"], host["generation"]) == ("direct", {}, 0)


# -- providers by name ----------------------------------------------------------------------------------


def test_unknown_provider_is_400_naming_provider_and_stores_nothing(admin, config):
    response = add(admin, "hv5", provider="vmware", uri="vmware://vcenter/dc")
    assert response.status == 400, response.text
    error = response.json()["error"]
    assert error["field"] == "provider" and "unknown desktop provider 'vmware'" in error["message"]
    assert admin.get("/api/v1/hosts/hv5").status == 404
    assert audit_actions(config) == []


def test_a_uri_the_provider_does_not_speak_is_400_naming_uri(admin, toy_provider):
    response = add(admin, "toy1", provider="toy", uri="test:///default")
    assert response.status == 400, response.text
    assert response.json()["error"]["field"] == "uri"
    assert admin.get("/api/v1/hosts/toy1").status == 404


def test_a_host_added_with_a_registered_provider_is_driven_by_it(admin, config, toy_provider):
    response = add(admin, "toy1", provider="toy", uri="toy:///toy1", labels={"zone": "business"})
    assert response.status == 201, response.text
    assert response.json()["provider"] == "toy"
    assert admin.get("/api/v1/hosts/local").json()["provider"] == "libvirt"
    # Pool mois-office wants zone business, which only toy1 has: its desktop must come from the toy provider.
    connected = admin.post("/api/v1/pools/mois-office/connect")
    assert connected.status == 200, connected.text
    desktop = connected.json()["desktop"]["name"]
    assert list(toy_provider.desktops["toy1"]) == [desktop]
    assert toy_provider.desktops["toy1"][desktop].image == TEST_IMAGE


def test_a_configured_host_gets_the_provider_its_row_names(
    tmp_path, broker_server, fake_authenticator, toy_provider
):
    toy_host = {"name": "toy-1", "provider": "toy", "uri": "toy:///toy-1", "labels": {"zone": "business"}}
    config = make_broker_config(tmp_path / "toy.db", hosts=[toy_host], pools=POOLS)
    url = broker_server(config, authenticator=fake_authenticator, image_resolver=lambda p: TEST_IMAGE)
    user = BrokerClient(url)
    user.login("kimmj")
    connected = user.post("/api/v1/pools/mois-office/connect")
    assert connected.status == 200, connected.text
    session_id = connected.json()["session_id"]
    assert list(toy_provider.desktops["toy-1"]) == [connected.json()["desktop"]["name"]]
    assert user.post(f"/api/v1/sessions/{session_id}/logoff").status == 200
    assert toy_provider.desktops["toy-1"] == {}  # a floating pool's desktop goes at logoff
