"""Pools and rollouts given bad input: errors name the field and nothing is half made.

No guest boots here: the host is unreachable (the one hypervisor failure unit tests may fake), so a
rollout that gets as far as starting a canary rolls back on its own. Real canaries: test_rollout.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from broker.app import prepare_database
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import AuditEvent, Desktop, Pool, Rollout
from broker.desktops import DesktopService
from broker.image_catalog import Catalog, NewVersion
from broker.pools import PoolManager
from tests.fixtures.broker import (
    COOKIE_SECRET,
    BrokerClient,
    UnreachableProvider,
    make_broker_config,
    write_broker_config,
)
from tests.fixtures.common import wait_until

POOL = "mois-office"
BROKER = {"cookie_secret": COOKIE_SECRET, "gateway_url": "ws://127.0.0.1:9/ws", "admin_groups": ["mois"]}


def pool_entry(**settings) -> dict:
    return {"name": POOL, "display_name": "행정안전부", "groups": ["mois"]} | settings


def register(config, tmp_path: Path, versions=("1", "2")) -> None:
    disk = tmp_path / "office.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    upgrade(config.database.url)
    database = Database(config.database)
    try:
        for version in versions:
            with database.transaction() as session:
                Catalog(config.images.cache_dir).register(session, NewVersion(POOL, version, disk))
    finally:
        database.close()


def rollout_rows(config) -> list[Rollout]:
    database = Database(config.database)
    try:
        with database.transaction() as session:
            return list(session.scalars(select(Rollout).order_by(Rollout.id)))
    finally:
        database.close()


def state_gauge(state: str) -> float | None:
    return REGISTRY.get_sample_value("vdi_pool_rollout_state", {"pool": POOL, "state": state})


# -- the pool API: admin rollouts --------------------------------------------------------------------


def sections(tmp_path) -> dict:
    return {
        "broker": BROKER,
        "images": {"cache_dir": str(tmp_path / "store")},
        "pools": [pool_entry(image=POOL, image_version="1")],
    }


@pytest.fixture
def config(tmp_path):
    return make_broker_config(tmp_path / "broker.db", **sections(tmp_path))


@pytest.fixture
def url(broker_server, config, fake_authenticator, tmp_path):
    register(config, tmp_path)
    drivers = {host.name: UnreachableProvider(host) for host in config.hosts}
    return broker_server(config, authenticator=fake_authenticator, providers=drivers)


def admin(url) -> BrokerClient:
    client = BrokerClient(url)
    assert client.login("kimmj").status == 200
    return client


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "9"}, "version"),
        ({"version": "2", "canary": "0"}, "canary"),
        ({"version": "2", "canary": "150%"}, "canary"),
        ({"version": "2", "canary": "a few"}, "canary"),
        ({"version": "2", "deadline_s": 5}, "deadline_s"),
        ({"canary": "1"}, "version"),
    ],
)
def test_bad_rollout_request_is_400_naming_the_field_and_records_nothing(url, config, body, field):
    response = admin(url).post(f"/api/v1/admin/pools/{POOL}/rollouts", json=body)

    assert response.status == 400, response.body
    assert response.json()["error"]["field"] == field
    assert rollout_rows(config) == []


def test_rollout_to_the_version_the_pool_is_on_is_a_conflict(url):
    response = admin(url).post(f"/api/v1/admin/pools/{POOL}/rollouts", json={"version": "1"})

    assert response.status == 409
    assert response.json()["error"] == {
        "reason": "already_on_version",
        "message": f"version: pool {POOL} is already on {POOL}:1.",
        "field": "version",
    }


def test_rollout_needs_an_administrator_and_a_known_pool(url):
    user = BrokerClient(url)
    user.login("choijw")

    refused = user.post(f"/api/v1/admin/pools/{POOL}/rollouts", json={"version": "2"})
    unknown = admin(url).post("/api/v1/admin/pools/no-such-pool/rollouts", json={"version": "2"})

    assert refused.status == 403
    assert unknown.status == 404 and unknown.json()["error"]["reason"] == "unknown_pool"


def test_rollout_whose_canary_cannot_start_rolls_back_on_its_own(url, config):
    client = admin(url)

    started = client.post(f"/api/v1/admin/pools/{POOL}/rollouts", json={"version": "2", "deadline_s": 60})

    assert started.status == 202, started.body
    assert started.json()["state"] == "pending" and started.json()["from_image"] == f"{POOL}:1"
    status = wait_until(
        lambda: (
            (s := client.get(f"/api/v1/admin/pools/{POOL}/rollout").json())["rollout"]["state"]
            == "rolled_back"
            and s
        ),
        30,
        "the rollout rolled back",
    )
    assert status["image"] == f"{POOL}:1"  # the pool stays where it was
    reason = status["rollout"]["reason"]
    assert reason.startswith("a canary desktop of 2 could not start:") and "local" in reason
    wait_until(lambda: state_gauge("rolled_back") == 1, 10, "the rollout state gauge")
    assert state_gauge("canary") == 0
    database = Database(config.database)
    try:
        with database.transaction() as session:
            events = session.scalars(select(AuditEvent).where(AuditEvent.action.like("rollout.%"))).all()
            canaries = session.scalars(select(Desktop).where(Desktop.domain_name.like("%canary-r%"))).all()
    finally:
        database.close()
    assert [(e.action, e.result, e.actor) for e in events] == [
        ("rollout.start", "success", "kimmj"),
        ("rollout.rollback", "failure", "rollout"),
    ]
    assert events[1].detail["reason"] == reason
    assert [c.state for c in canaries] == ["error"]  # holds no capacity; nothing was made on the host


def test_canary_rollout_left_by_a_stopped_broker_is_checked_again_and_rolled_back(
    broker_server, config, fake_authenticator, tmp_path
):
    register(config, tmp_path)
    database = Database(config.database)
    asyncio.run(prepare_database(database, config))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10)
    with database.transaction() as session:
        canary = Desktop(
            pool_name=POOL,
            host_name="local",
            domain_name=f"vdi-{POOL}-canary-r1-abcdef",
            image=f"{POOL}:2",
            state="running",
        )
        session.add(canary)
        session.add(
            Rollout(
                pool_name=POOL,
                image_name=POOL,
                version="2",
                from_image=f"{POOL}:1",
                state="canary",
                canary="1",
                canary_count=1,
                canaries=[canary.domain_name],
                deadline_s=120,
                created_at=long_ago,
                deadline_at=long_ago + dt.timedelta(seconds=120),
            )
        )
    database.close()
    drivers = {host.name: UnreachableProvider(host) for host in config.hosts}

    broker_server(config, authenticator=fake_authenticator, providers=drivers)

    (row,) = wait_until(
        lambda: [r for r in rollout_rows(config) if r.state == "rolled_back"],
        30,
        "the rollback after restart",
    )
    assert row.reason.startswith(
        f"canary desktop vdi-{POOL}-canary-r1-abcdef did not show ready within 120 s (waiting for its host"
    )
    assert "not removed, host unreachable" in row.reason  # its host never answered: said, not hidden


# -- pools the catalog or the hosts cannot serve -----------------------------------------------------

CONFIG_TOML = """
[database]
url = "sqlite:///{db}"

[broker]
cookie_secret = "{secret}"
gateway_url = "ws://127.0.0.1:9/ws"
port = 0

[ldap]
user_base = "ou=people,dc=test"
group_base = "ou=groups,dc=test"

[images]
cache_dir = "{store}"

[[hosts]]
name = "local"
uri = "qemu+ssh://root@hv-local.example/system"

[[pools]]
name = "{pool}"
display_name = "행정안전부"
groups = ["mois"]
{pool_settings}
"""


def config_file(tmp_path: Path, pool_settings: str) -> Path:
    path = tmp_path / "vdi.toml"
    path.write_text(
        CONFIG_TOML.format(
            db=tmp_path / "vdi.db",
            secret=COOKIE_SECRET,
            store=tmp_path / "store",
            pool=POOL,
            pool_settings=pool_settings,
        )
    )
    return path


def vdi(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("pool_settings", "message"),
    [
        (
            f'image = "{POOL}"\nimage_version = "9"',
            f"pools[0].image_version: {POOL} has no version 9 in the image catalog",
        ),
        ('image = "win11"', "pools[0].image: no image named win11 in the image catalog"),
    ],
)
def test_broker_refuses_to_start_with_a_pool_image_the_catalog_lacks(tmp_path, pool_settings, message):
    path = config_file(tmp_path, pool_settings)
    from vdi.config import load_config

    register(load_config(path), tmp_path, versions=("1",))

    result = vdi(path, "broker")

    assert result.returncode == 2, result.stderr
    assert f"vdi: invalid configuration: {message}" in result.stderr
    engine = Database(load_config(path).database)
    try:
        with engine.transaction() as session:
            assert session.scalar(select(func.count()).select_from(Pool)) == 0  # nothing recorded
    finally:
        engine.close()


def test_pool_larger_than_its_hosts_can_hold_is_not_filled_and_says_which_key(tmp_path, caplog):
    config = make_broker_config(
        tmp_path / "broker.db",
        pools=[pool_entry(min_size=8, spares=2)],  # the one host holds 5
    )
    upgrade(config.database.url)
    database = Database(config.database)
    drivers = {host.name: UnreachableProvider(host) for host in config.hosts}

    async def one_pass() -> None:
        await prepare_database(database, config)
        desktops = DesktopService(config, database, drivers)
        try:
            await PoolManager(config, database, desktops).reconcile_once()
        finally:
            desktops.close()

    with caplog.at_level(logging.ERROR, logger="broker.pool_images"):
        asyncio.run(one_pass())
    with database.transaction() as session:
        desktops = session.scalar(select(func.count()).select_from(Desktop))
    database.close()

    assert (
        f"pool {POOL} not filled: pools[0].min_size: pool {POOL} wants 8 desktops but the hosts matching "
        "its zone, site and labels can hold at most 5 (local 5)" in caplog.messages
    )
    assert desktops == 0 and drivers["local"].calls == []
    assert REGISTRY.get_sample_value("vdi_pool_capacity_shortfall", {"pool": POOL}) == 3


def test_cli_rollout_records_a_pending_rollout_and_refuses_a_second(tmp_path):
    path = config_file(tmp_path, f'image = "{POOL}"\nimage_version = "1"')
    from vdi.config import load_config

    register(load_config(path), tmp_path, versions=("1", "2", "3"))

    first = vdi(path, "pool", "rollout", POOL, "2", "--canary", "20%", "--deadline", "90")
    second = vdi(path, "pool", "rollout", POOL, "3")
    bad = vdi(path, "pool", "rollout", POOL, "3", "--canary", "0")
    status = vdi(path, "pool", "rollout-status", POOL, "--json")

    assert first.returncode == 0, first.stderr
    assert "state    pending  (canary 20% = 1 desktop(s))" in first.stdout
    assert second.returncode == 2
    assert f"pool: {POOL} already has rollout 1 to 2 (pending)" in second.stderr
    assert bad.returncode == 2 and "canary: Value error, a count like 1 or a share like 20%" in bad.stderr
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["image"] == f"{POOL}:1"
    assert data["rollout"]["state"] == "pending" and data["rollout"]["requested_by"].startswith("cli:")


def test_cli_rollout_wait_follows_the_rollout_to_its_rollback_and_exits_non_zero(url, config, tmp_path):
    path = write_broker_config(tmp_path / "cli.toml", tmp_path / "broker.db", **sections(tmp_path))

    waited = vdi(path, "pool", "rollout", POOL, "2", "--deadline", "60", "--wait")

    assert waited.returncode == 1, waited.stderr
    progress = [line for line in waited.stderr.splitlines() if line.startswith(f"pool {POOL}: rollout 1 ")]
    # Not a terminal: a plain line for each change, no bar, no redrawing.
    assert "\r" not in waited.stderr and "#" not in waited.stderr
    assert len(progress) == len(set(progress))
    assert progress[-1] == (
        f"pool {POOL}: rollout 1 rolled_back: 0 of 0 desktop(s) on {POOL}:2, canaries 0 of 1 started"
    )
    (reason,) = [r.reason for r in rollout_rows(config)]
    assert f"vdi pool rollout: pool {POOL}: rollout 1 to {POOL}:2 rolled_back: {reason}" in waited.stderr
    assert "state    pending" in waited.stdout and "state    rolled_back" in waited.stdout
    # The canary's host refused it: none started, nothing of the new version in the pool.
    assert f"progress 0 of 0 desktop(s) on {POOL}:2, canaries 0 of 1 started" in waited.stdout


def test_cli_rollout_wait_gives_up_at_its_timeout_naming_the_pool_and_the_state(tmp_path):
    path = config_file(tmp_path, f'image = "{POOL}"\nimage_version = "1"')
    from vdi.config import load_config

    register(load_config(path), tmp_path, versions=("1", "2"))

    waited = vdi(path, "pool", "rollout", POOL, "2", "--wait", "--timeout", "1")  # no broker runs
    followed = vdi(path, "pool", "rollout-status", POOL, "--wait", "--timeout", "1", "--json")
    bad = vdi(path, "pool", "rollout-status", POOL, "--wait", "--timeout", "0")

    assert waited.returncode == 3, waited.stderr
    assert (
        f"vdi pool rollout: pool {POOL}: rollout 1 to {POOL}:2 is still pending after 1 s (no broker has "
        "taken it: is `vdi broker` running?)" in waited.stderr
    )
    assert f"pool {POOL}: rollout 1 pending: 0 of 0 desktop(s) on {POOL}:2, canaries 0 of 1 started\n" in (
        waited.stderr
    )
    assert followed.returncode == 3, followed.stderr
    assert json.loads(followed.stdout)["rollout"]["progress"] == {
        "canaries_started": 0,
        "canaries_wanted": 1,
        "desktops_on_version": 0,
        "desktops_total": 0,
        "finished": False,
    }
    assert bad.returncode == 2 and "argument --timeout: a whole number of seconds, 1 or more" in bad.stderr
    assert [row.state for row in rollout_rows(load_config(path))] == ["pending"]  # waiting changed nothing


def test_refusals_speak_korean_to_a_korean_browser(url):
    response = admin(url).post(
        f"/api/v1/admin/pools/{POOL}/rollouts", json={"version": "1"}, headers={"Accept-Language": "ko"}
    )

    assert response.status == 409
    assert response.json()["error"]["message"] == f"version: {POOL} 풀은 이미 {POOL}:1 버전입니다."


def test_rollout_to_a_version_whose_stored_file_changed_rolls_back_before_placing_anything(url, config):
    database = Database(config.database)
    try:
        with database.transaction() as session:
            stored = Path(Catalog.show(session, POOL, "2").path)
    finally:
        database.close()
    stored.chmod(0o644)
    with stored.open("r+b") as disk:
        disk.seek(1 << 20)
        disk.write(b"tampered")
    client = admin(url)

    assert client.post(f"/api/v1/admin/pools/{POOL}/rollouts", json={"version": "2"}).status == 202
    (row,) = wait_until(
        lambda: [r for r in rollout_rows(config) if r.state == "rolled_back"], 30, "the rollback"
    )

    assert row.reason == (
        f"a canary desktop of 2 could not start: The desktop image is not available: {POOL} 2: "
        f"sha256: {POOL} 2: the stored file changed since import."
    )
    database = Database(config.database)
    try:
        with database.transaction() as session:
            assert session.scalar(select(func.count()).select_from(Desktop)) == 0  # nothing placed
    finally:
        database.close()
