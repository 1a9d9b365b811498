"""Power policy and pool kinds with real QEMU guests: what happens to a desktop after logoff.

The demo guest counts its boots in a file on its own disk and prints `boots=N` on its serial console
(images/demo_init.sh), so whether a user's writes survived is what the guest itself reports:

- a dedicated desktop with `power_policy = "shutoff"` is shut off once its delay has passed, and the
  next connect starts the same domain from the same overlay: the guest counts its second boot;
- a floating desktop is destroyed at logoff, and the next one is a fresh overlay: its first boot again.
"""

from __future__ import annotations

from collections.abc import Iterator

import libvirt
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent, Desktop
from broker.power import POWER_ACTOR
from tests.fixtures.broker import BrokerThread, demo_image_broker, make_broker_config, migrated_database
from tests.fixtures.broker_api import connect, logoff, signed_in
from tests.fixtures.common import wait_until
from tests.fixtures.libvirt import wait_for_console
from vdi.config import ConfigError

pytestmark = pytest.mark.e2e

DEDICATED = "mois-office"
FLOATING = "moef-office"
SUSPENDING = "mois-standby"
# Short: the demo guest powers off at the ACPI power button, and one that has not by then is powered off.
POWER = {"power_policy": "shutoff", "power_after_s": 2, "shutdown_timeout_s": 2}


@pytest.fixture
def power_config(tmp_path, libvirt_host):
    return make_broker_config(
        tmp_path / "broker.db",
        hosts=[libvirt_host.model_dump(exclude_none=True)],
        pools=[
            {"name": DEDICATED, "display_name": "행정안전부", "groups": ["mois"], "kind": "dedicated"}
            | POWER,
            {"name": FLOATING, "display_name": "기획재정부", "groups": ["moef"], "kind": "floating"},
            {"name": SUSPENDING, "display_name": "행정안전부 (절전)", "groups": ["mois"], "kind": "dedicated"}
            | POWER
            | {"power_policy": "suspend"},
        ],
    )


@pytest.fixture
def power_db(power_config) -> Iterator[Database]:
    with migrated_database(power_config) as db:
        yield db


@pytest.fixture
def broker(power_config, power_db, fake_authenticator, demo_image, libvirt_host) -> Iterator[BrokerThread]:
    with demo_image_broker(
        power_config, power_db, fake_authenticator, demo_image, libvirt_host, "power_manager"
    ) as broker:
        yield broker


def desktop_state(db: Database, name: str) -> str:
    with db.transaction() as session:
        return session.scalars(select(Desktop.state).where(Desktop.domain_name == name)).one()


def power_events(db: Database) -> list[tuple[str, str, str]]:
    with db.transaction() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("power_%")).order_by(AuditEvent.id)
        ).all()
        return [(row.action, row.actor, row.result) for row in rows]


def power_gauge(state: str) -> float | None:
    return REGISTRY.get_sample_value("vdi_pool_desktops_power", {"pool": DEDICATED, "state": state})


def overlay_allocation(host, name: str) -> int:
    conn = libvirt.open(host.uri)
    try:
        volume = conn.storagePoolLookupByName(host.storage_pool).storageVolLookupByName(name + ".qcow2")
        return volume.info()[2]
    finally:
        conn.close()


def test_dedicated_desktop_is_shut_off_after_its_delay_and_restarts_with_its_disk(
    broker, power_db, libvirt_driver, libvirt_host
):
    client = signed_in(broker.base_url, "kimmj")
    first = connect(client, DEDICATED)
    name = first["desktop"]["name"]
    wait_for_console(libvirt_driver, name, "boots=1 ")
    logoff(client, first["session_id"])

    wait_until(lambda: desktop_state(power_db, name) == "stopped", 90, f"{name} shut off by its policy")
    assert libvirt_driver.desktop_state(name) == "shutoff"
    assert power_events(power_db) == [("power_stop", POWER_ACTOR, "success")]
    wait_until(lambda: power_gauge("stopped") == 1, 30, "the power gauge counting it stopped")
    written = overlay_allocation(libvirt_host, name)
    listed = client.get("/desktops").text
    assert 'data-state="stopped"' in listed
    assert "켜는 중입니다" in listed  # what the portal says while a connect starts it

    again = connect(client, DEDICATED)

    assert again["desktop"]["name"] == name
    assert again["desktop"]["state"] == "running"
    assert libvirt_driver.desktop_state(name) == "running"
    # The guest read its own earlier write back from the kept overlay: its second boot.
    wait_for_console(libvirt_driver, name, "boots=2 ")
    assert overlay_allocation(libvirt_host, name) >= written
    assert power_events(power_db)[-1] == ("power_start", "kimmj", "success")
    token = client.post(f"/api/v1/sessions/{again['session_id']}/console-token")
    assert token.status == 200, token.body


def test_suspended_desktop_resumes_where_it_was(broker, power_db, libvirt_driver, libvirt_host):
    client = signed_in(broker.base_url, "kimmj")
    first = connect(client, SUSPENDING)
    name = first["desktop"]["name"]
    wait_for_console(libvirt_driver, name, "boots=1 ")
    logoff(client, first["session_id"])

    wait_until(lambda: desktop_state(power_db, name) == "suspended", 90, f"{name} suspended by its policy")
    assert libvirt_driver.desktop_state(name) == "suspended"

    again = connect(client, SUSPENDING)

    assert (again["desktop"]["name"], again["desktop"]["state"]) == (name, "running")
    conn = libvirt.open(libvirt_host.uri)
    try:
        # Restored from the memory saved at suspend, not booted again.
        assert conn.lookupByName(name).state() == [
            libvirt.VIR_DOMAIN_RUNNING,
            libvirt.VIR_DOMAIN_RUNNING_RESTORED,
        ]
    finally:
        conn.close()
    assert [event[0] for event in power_events(power_db)] == ["power_suspend", "power_resume"]


def test_floating_desktops_writes_are_gone_after_logoff(broker, libvirt_driver):
    client = signed_in(broker.base_url, "choijw")
    first = connect(client, FLOATING)
    wait_for_console(libvirt_driver, first["desktop"]["name"], "boots=1 ")
    logoff(client, first["session_id"])

    second = connect(client, FLOATING)

    assert second["desktop"]["name"] != first["desktop"]["name"]
    # A fresh overlay from the golden image: the guest finds no earlier boot on its disk.
    wait_for_console(libvirt_driver, second["desktop"]["name"], "boots=1 ")
    logoff(client, second["session_id"])


def test_a_power_policy_needs_a_dedicated_pool(tmp_path):
    pool = {"name": FLOATING, "display_name": "x", "groups": ["moef"], "kind": "floating"}
    with pytest.raises(ConfigError, match="power_policy"):
        make_broker_config(tmp_path / "db", pools=[pool | {"power_policy": "suspend"}])
    with pytest.raises(ConfigError, match="power_policy"):
        make_broker_config(tmp_path / "db", pools=[pool | {"kind": "dedicated", "power_policy": "hibernate"}])
