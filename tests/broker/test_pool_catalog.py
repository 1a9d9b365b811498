"""Pools brokers share (broker/pool_catalog.py): the file seeds an empty database only, the database wins
over a file that disagrees (with a warning naming the keys), and administrators change pools through the
API and the command line, audited, with every broker taking the change on by itself."""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import select

from broker.app import sync_inventory
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import AuditEvent, Pool
from monitoring.metrics import CONFIG_FILE_DISAGREEMENTS
from tests.fixtures.broker import (
    COOKIE_SECRET,
    TEST_IMAGE,
    BrokerClient,
    BrokerThread,
    make_broker_config,
)
from tests.fixtures.common import wait_until
from vdi.cli import main

BROKER = {"cookie_secret": COOKIE_SECRET, "gateway_url": "ws://127.0.0.1:9/ws", "admin_groups": ["mois"]}
POOLS = [
    {"name": "mois-office", "display_name": "행정안전부", "groups": ["mois"]},
    {"name": "moef-office", "display_name": "기획재정부", "groups": ["moef"]},
]


def config_with(tmp_path, pools=POOLS, **sections):
    return make_broker_config(tmp_path / "pools.db", broker=BROKER, pools=pools, **sections)


def stored(db) -> dict[str, dict]:
    with db.transaction() as session:
        return {row.name: row.settings for row in session.scalars(select(Pool))}


def audits(db, action: str) -> list[AuditEvent]:
    with db.transaction() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_the_file_seeds_an_empty_database_and_then_the_database_wins(tmp_path, broker_db, caplog):
    first = config_with(tmp_path)
    with broker_db.transaction() as session:
        assert sync_inventory(session, first) == []
    assert set(stored(broker_db)) == {"mois-office", "moef-office"}
    assert stored(broker_db)["mois-office"]["display_name"] == "행정안전부"

    other = [
        {**POOLS[0], "display_name": "다른 이름", "spares": 1},
        {**POOLS[1]},
        {**POOLS[1], "name": "extra"},
    ]
    second = config_with(tmp_path, pools=other, hosts=[{"name": "local", "uri": "qemu:///system"}])
    with caplog.at_level(logging.WARNING, logger="broker.pool_catalog"), broker_db.transaction() as session:
        keys = sync_inventory(session, second)
    assert keys == [
        "pools.extra",
        "pools.mois-office.display_name",
        "pools.mois-office.spares",
        "hosts.local.max_desktops",
    ]
    assert (
        "the configuration file disagrees with the database on pools.extra, pools.mois-office" in caplog.text
    )
    assert "the database wins" in caplog.text
    assert CONFIG_FILE_DISAGREEMENTS._value.get() == 4
    # The broker works with the database's pools; the database was not changed.
    assert [(pool.name, pool.display_name, pool.spares) for pool in second.pools] == [
        ("mois-office", "행정안전부", 0),
        ("moef-office", "기획재정부", 0),
    ]
    assert set(stored(broker_db)) == {"mois-office", "moef-office"}


def test_rows_from_before_shared_pools_take_the_files_settings_once(tmp_path, broker_db):
    with broker_db.transaction() as session:  # as migration 0012 leaves a pool the old broker wrote
        session.add(Pool(name="mois-office", display_name="old", image="demo", groups=["mois"]))
        session.add(
            Pool(name="moef-office", display_name="old", image="demo", groups=["moef"], settings=POOLS[1])
        )
    with broker_db.transaction() as session:
        sync_inventory(session, config_with(tmp_path))
    assert stored(broker_db)["mois-office"]["display_name"] == "행정안전부"


@pytest.fixture
def pools_db(tmp_path):
    config = config_with(tmp_path)
    upgrade(config.database.url)
    database = Database(config.database)
    yield database
    database.close()


@pytest.fixture
def brokers(tmp_path, pools_db, fake_authenticator, unreachable_providers):
    started = [
        BrokerThread(
            config_with(tmp_path),
            authenticator=fake_authenticator,
            providers=unreachable_providers,
            image_resolver=lambda pool: TEST_IMAGE,
        )
        for _ in range(2)
    ]
    yield started
    for broker in started:
        broker.stop()


def test_an_administrator_changes_a_pool_and_every_broker_takes_it_on(brokers, pools_db):
    first, second = brokers
    admin = BrokerClient(first.base_url)
    admin.login("kimmj")  # group mois: an administrator here
    response = admin.request(
        "PATCH", "/api/v1/admin/pools/moef-office", json={"display_name": "재정부", "spares": 0}
    )
    assert response.status == 200, response.text
    assert response.json()["display_name"] == "재정부"
    assert response.json()["revision"] == 2
    (event,) = audits(pools_db, "pool.change")
    assert (event.actor, event.target, event.detail) == (
        "kimmj",
        "moef-office",
        {"changed": {"display_name": "재정부"}},
    )
    assert first.config.pool("moef-office").display_name == "재정부"  # at once where it was changed
    wait_until(lambda: second.config.pool("moef-office").display_name == "재정부", 20, "the other broker")
    # A first pool with spares gives the pool manager work: it starts on both brokers then.
    assert first.app.pool_manager not in first.app._running
    assert admin.request("PATCH", "/api/v1/admin/pools/moef-office", json={"spares": 1}).status == 200
    assert first.app.pool_manager in first.app._running
    wait_until(lambda: second.app.pool_manager in second.app._running, 20, "the other broker's pool manager")

    added = admin.post("/api/v1/admin/pools", json={**POOLS[1], "name": "mois-lab", "groups": ["mois"]})
    assert added.status == 201, added.text
    wait_until(lambda: second.config.pool("mois-lab") is not None, 20, "the new pool on the other broker")
    user = BrokerClient(second.base_url)
    user.login("kimmj")
    names = [pool["name"] for pool in user.get("/api/v1/desktops").json()["pools"]]
    assert "mois-lab" in names

    assert admin.request("DELETE", "/api/v1/admin/pools/mois-lab").status == 204
    wait_until(lambda: second.config.pool("mois-lab") is None, 20, "removed on the other broker")
    assert [e.target for e in audits(pools_db, "pool.remove")] == ["mois-lab"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("PATCH", "/api/v1/admin/pools/moef-office", {"spares": -1}, 400, "spares"),
        ("PATCH", "/api/v1/admin/pools/moef-office", {"max_size": 1, "spares": 2}, 400, "max_size"),
        ("PATCH", "/api/v1/admin/pools/moef-office", {"name": "renamed"}, 400, "name"),
        ("PATCH", "/api/v1/admin/pools/nope", {"spares": 1}, 404, None),
        ("POST", "/api/v1/admin/pools", POOLS[0], 409, None),
        ("POST", "/api/v1/admin/pools", {"name": "x"}, 400, "display_name"),
    ],
)
def test_bad_pool_changes_name_the_field_and_change_nothing(
    brokers, pools_db, method, path, body, status, field
):
    admin = BrokerClient(brokers[0].base_url)
    admin.login("kimmj")
    before = stored(pools_db)
    response = admin.request(method, path, json=body)
    assert response.status == status, response.text
    if field is not None:
        assert response.json()["error"]["message"].startswith(f"{field}:")
    assert stored(pools_db) == before
    assert audits(pools_db, "pool.change") == []


def test_a_user_who_is_not_an_administrator_cannot_change_pools(brokers):
    user = BrokerClient(brokers[0].base_url)
    user.login("choijw")
    assert user.request("PATCH", "/api/v1/admin/pools/moef-office", json={"spares": 1}).status == 403


def test_pools_from_the_command_line(tmp_path, capsys):
    config = config_with(tmp_path)
    path = tmp_path / "vdi.toml"
    path.write_text(
        f"""
[database]
url = "{config.database.url}"

[broker]
cookie_secret = "{COOKIE_SECRET}"

[ldap]
user_base = "ou=people,dc=test"
group_base = "ou=groups,dc=test"

[[hosts]]
name = "local"
uri = "qemu:///system"

[[pools]]
name = "mois-office"
display_name = "행정안전부"
groups = ["mois"]
""",
        encoding="utf-8",
    )

    def vdi(*args):
        code = main(["--config", str(path), "pool", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, out, _ = vdi("set", "mois-office", "spares=2", 'groups=["mois", "moef"]', "display_name=업무용")
    assert code == 0
    assert (json.loads(out)["spares"], json.loads(out)["groups"]) == (2, ["mois", "moef"])
    code, _, err = vdi("set", "mois-office", "spares=lots")
    assert code == 2
    assert err.startswith("vdi pool set: spares:")
    code, out, _ = vdi("list")
    assert [pool["display_name"] for pool in json.loads(out)["pools"]] == ["업무용"]
