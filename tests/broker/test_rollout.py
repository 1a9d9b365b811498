"""Image rollouts with real QEMU guests: a broken version rolls back on its own, a good one is promoted.

The pool starts on the demo image registered in the catalog as version v1, with one prewarmed spare.
"broken" is the same disk, kernel and initrd with `rdinit=/nonexistent` on the command line, so the
kernel finds no init and panics; v2 is the demo image again under another version.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Iterator

import libvirt
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import AuditEvent, Desktop, DesktopSession, Rollout
from broker.image_catalog import Catalog, NewVersion
from images.demo import CMDLINE
from tests.fixtures.broker import (
    COOKIE_SECRET,
    BrokerClient,
    BrokerThread,
    make_broker_config,
    seed_session,
    write_broker_config,
)
from tests.fixtures.common import wait_until
from tests.fixtures.libvirt import destroy_desktops

pytestmark = pytest.mark.e2e

POOL = "moef-office"
# Under TCG the demo guest shows its banner in about 8 s; other test sessions share the two cores.
DEADLINE_S = 150


def rollout_sections(tmp_path, libvirt_host) -> dict:
    pool = {
        "name": POOL,
        "display_name": "기획재정부",
        "groups": ["moef"],
        "kind": "floating",
        "spares": 1,
        "image": "demo",
        "image_version": "v1",
    }
    return {
        "broker": {
            "cookie_secret": COOKIE_SECRET,
            "gateway_url": "ws://127.0.0.1:9/ws",
            "admin_groups": ["moef"],
        },
        "hosts": [libvirt_host.model_dump(mode="json", exclude_none=True)],
        "pools": [pool],
        "images": {"cache_dir": str(tmp_path / "store")},
    }


@pytest.fixture
def rollout_config(tmp_path, libvirt_host):
    return make_broker_config(tmp_path / "broker.db", **rollout_sections(tmp_path, libvirt_host))


@pytest.fixture
def rollout_db(rollout_config, demo_image) -> Iterator[Database]:
    upgrade(rollout_config.database.url)
    db = Database(rollout_config.database)
    catalog = Catalog(rollout_config.images.cache_dir)
    for version, cmdline in (("v1", CMDLINE), ("broken", CMDLINE + " rdinit=/nonexistent"), ("v2", CMDLINE)):
        new = NewVersion(
            name="demo",
            version=version,
            file=demo_image.disk,
            kernel=demo_image.kernel,
            initrd=demo_image.initrd,
            cmdline=cmdline,
        )
        with db.transaction() as session:
            catalog.register(session, new)
    yield db
    db.close()


@pytest.fixture
def broker(rollout_config, rollout_db, fake_authenticator, libvirt_host) -> Iterator[BrokerThread]:
    broker = BrokerThread(rollout_config, authenticator=fake_authenticator)
    yield broker
    broker._loop_thread.call(broker.app.pool_manager.stop())
    broker._loop_thread.call(broker.app.rollout_manager.stop())
    broker.stop()
    destroy_desktops(rollout_db, libvirt_host)


def spares(db: Database) -> list[tuple[str, str]]:
    with db.transaction() as session:
        query = select(Desktop.domain_name, Desktop.image).where(
            Desktop.pool_name == POOL, Desktop.assigned_user.is_(None), Desktop.state == "running"
        )
        return [tuple(row) for row in session.execute(query.order_by(Desktop.id))]


def on_host(host, text: str) -> list[str]:
    """Domains and volumes on the host whose names contain `text`."""
    conn = libvirt.open(host.uri)
    try:
        domains = [d.name() for d in conn.listAllDomains(0)]
        volumes = conn.storagePoolLookupByName(host.storage_pool).listVolumes()
    finally:
        conn.close()
    return [name for name in domains + volumes if text in name]


def rollout(client: BrokerClient, version: str) -> dict:
    response = client.post(
        f"/api/v1/admin/pools/{POOL}/rollouts",
        json={"version": version, "canary": "1", "deadline_s": DEADLINE_S},
    )
    assert response.status == 202, response.body
    return response.json()


def finished(client: BrokerClient) -> dict | None:
    status = client.get(f"/api/v1/admin/pools/{POOL}/rollout").json()
    return status if status["rollout"]["state"] in ("promoted", "rolled_back") else None


def test_broken_version_rolls_back_on_its_own_and_a_good_one_is_promoted(
    broker, rollout_db, libvirt_host, tmp_path
):
    ((first_spare, image),) = wait_until(lambda: spares(rollout_db), 120, "the pool's spare of v1")
    assert image == "demo:v1"
    client = BrokerClient(broker.base_url)
    assert client.login("choijw").status == 200

    broken = rollout(client, "broken")
    status = wait_until(lambda: finished(client), DEADLINE_S + 60, "the broken rollout to finish")

    assert status["rollout"]["state"] == "rolled_back"
    assert status["image"] == "demo:v1"
    reason = status["rollout"]["reason"]
    assert (
        reason.startswith(f"canary desktop vdi-{POOL}-canary-r{broken['id']}-") and "Kernel panic" in reason
    )
    assert on_host(libvirt_host, f"canary-r{broken['id']}-") == []  # no domain, overlay or console log left
    assert spares(rollout_db) == [(first_spare, "demo:v1")]
    # The state gauge is published at the end of the rollout manager's pass that finished the rollout.
    rolled_back = {"pool": POOL, "state": "rolled_back"}
    wait_until(
        lambda: REGISTRY.get_sample_value("vdi_pool_rollout_state", rolled_back) == 1,
        10,
        "the rollout state gauge",
    )

    # The good version from the command line, which follows it to the end (--wait).
    cli_config = write_broker_config(
        tmp_path / "cli.toml", tmp_path / "broker.db", **rollout_sections(tmp_path, libvirt_host)
    )
    command = [
        "pool",
        "rollout",
        POOL,
        "v2",
        "--canary",
        "1",
        "--deadline",
        str(DEADLINE_S),
        "--wait",
        "--json",
    ]
    waited = subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(cli_config), *command],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S + 120,
        check=False,
    )

    assert waited.returncode == 0, waited.stderr
    status = json.loads(waited.stdout)
    good = status["rollout"]
    assert good["state"] == "promoted", good["reason"]
    assert status["image"] == "demo:v2"
    lines = [line for line in waited.stderr.splitlines() if line.startswith(f"pool {POOL}: rollout ")]
    # At least the canary booting and the end; the old spare may already be gone when the last is read.
    assert re.fullmatch(
        rf"pool {POOL}: rollout {good['id']} canary: 1 of 2 desktop\(s\) on demo:v2, canaries 1 of 1 started",
        next(line for line in lines if " canary: " in line),
    )
    assert re.fullmatch(
        rf"pool {POOL}: rollout {good['id']} promoted: 1 of [12] desktop\(s\) on demo:v2, "
        "canaries 1 of 1 started",
        lines[-1],
    )
    assert client.get(f"/api/v1/admin/pools/{POOL}/rollout").json()["rollout"]["progress"]["finished"]
    # The canary stays as the pool's spare; the v1 spare is removed from its host.
    ((spare, image),) = wait_until(
        lambda: (
            [s for s in spares(rollout_db) if s[0] != first_spare] == spares(rollout_db)
            and spares(rollout_db)
        ),
        60,
        "the v1 spare replaced",
    )
    assert image == "demo:v2" and spare.startswith(f"vdi-{POOL}-canary-r{good['id']}-")
    wait_until(lambda: on_host(libvirt_host, first_spare) == [], 30, "the v1 spare's domain removed")
    connect = client.post(f"/api/v1/pools/{POOL}/connect")
    assert connect.status == 200, connect.body
    assert connect.json()["desktop"]["name"] == spare
    with rollout_db.transaction() as session:
        actions = session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.like("rollout.%")).order_by(AuditEvent.id)
        ).all()
    assert actions == ["rollout.start", "rollout.rollback", "rollout.start", "rollout.promote"]


# -- dedicated desktops after a promotion -------------------------------------------------------------


@pytest.fixture
def dedicated_config(tmp_path, libvirt_host):
    pool = {
        "name": POOL,
        "display_name": "기획재정부",
        "groups": ["moef"],
        "kind": "dedicated",
        "image": "demo",
        "image_version": "v1",
    }
    return make_broker_config(
        tmp_path / "broker.db",
        broker={
            "cookie_secret": COOKIE_SECRET,
            "gateway_url": "ws://127.0.0.1:9/ws",
            "admin_groups": ["mois"],
        },
        hosts=[libvirt_host.model_dump(exclude_none=True)],
        pools=[pool],
        images={"cache_dir": str(tmp_path / "store")},
    )


@pytest.fixture
def promoted(dedicated_config, demo_image, libvirt_host, fake_authenticator) -> Iterator[tuple]:
    """A broker whose dedicated pool a rollout moved from v1 to v2, with two users' v1 desktops in use.

    The v1 desktops are database rows only (their hosts' removal of a missing domain is a no-op), so the
    one guest this needs is the desktop an administrator's move starts on v2.
    """
    upgrade(dedicated_config.database.url)
    db = Database(dedicated_config.database)
    catalog = Catalog(dedicated_config.images.cache_dir)
    for version in ("v1", "v2"):
        files = {"kernel": demo_image.kernel, "initrd": demo_image.initrd, "cmdline": CMDLINE}
        with db.transaction() as session:
            catalog.register(session, NewVersion(name="demo", version=version, file=demo_image.disk, **files))
    broker = BrokerThread(dedicated_config, authenticator=fake_authenticator)
    now = dt.datetime.now(dt.UTC)
    with db.transaction() as session:
        session.add(
            Rollout(
                pool_name=POOL,
                image_name="demo",
                version="v2",
                from_image="demo:v1",
                state="promoted",
                canary="1",
                canary_count=1,
                canaries=[],
                deadline_s=60,
                created_at=now,
                deadline_at=now,
                finished_at=now,
            )
        )
    sessions = {user: seed_session(db, user, POOL, host=libvirt_host.name) for user in ("choijw", "kimmj")}
    with db.transaction() as session:
        session.execute(update(Desktop).values(image="demo:v1"))
    yield broker, db, sessions
    broker.stop()
    destroy_desktops(db, libvirt_host)
    db.close()


def desktop_row(db: Database, desktop_id: int) -> Desktop:
    with db.transaction() as session:
        return session.get(Desktop, desktop_id)


def test_dedicated_desktop_moves_at_logoff_or_when_an_administrator_moves_it(promoted):
    broker, db, sessions = promoted
    user = BrokerClient(broker.base_url)
    assert user.login("choijw").status == 200
    admin = BrokerClient(broker.base_url)
    assert admin.login("kimmj").status == 200
    own_session, own_desktop = sessions["choijw"]
    kim_session, kim_desktop = sessions["kimmj"]

    # Logoff of an outdated dedicated desktop removes it instead of keeping it.
    assert user.post(f"/api/v1/sessions/{own_session}/logoff").status == 200
    assert desktop_row(db, own_desktop).state == "deleted"

    # An administrator moves kimmj's desktop now: session ended, a v2 desktop started for kimmj.
    moved = admin.post(f"/api/v1/admin/desktops/{kim_desktop}/move")

    assert moved.status == 200, moved.body
    new = moved.json()["desktop"]
    assert new["state"] == "running" and new["pool"] == POOL
    assert desktop_row(db, kim_desktop).state == "deleted"
    fresh = desktop_row(db, new["id"])
    assert (fresh.image, fresh.assigned_user) == ("demo:v2", "kimmj")
    with db.transaction() as session:
        ended = session.get(DesktopSession, kim_session).state
        audit = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.in_(("logoff", "move_logoff", "desktop.move")))
            .order_by(AuditEvent.id)
        ).all()
    assert ended == "ended"
    assert [(e.action, e.actor) for e in audit] == [
        ("logoff", "choijw"),
        ("move_logoff", "kimmj"),
        ("desktop.move", "kimmj"),
    ]
    assert audit[0].detail["outdated_image"] == "demo:v1"
    assert audit[2].detail | {"desktop": None} == {
        "desktop": None,
        "from": "demo:v1",
        "to": "demo:v2",
        "user": "kimmj",
    }

    again = admin.post(f"/api/v1/admin/desktops/{new['id']}/move")
    unknown = admin.post("/api/v1/admin/desktops/999999/move")
    not_admin = user.post(f"/api/v1/admin/desktops/{new['id']}/move")

    assert again.status == 409 and again.json()["error"]["reason"] == "desktop_current"
    assert unknown.status == 404 and unknown.json()["error"]["field"] == "desktop"
    assert not_admin.status == 403
