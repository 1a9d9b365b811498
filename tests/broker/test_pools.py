"""Pool kinds against real QEMU guests: a dedicated desktop outlives logoff, a floating one does not.

Disconnecting (closing the console) never touches the desktop: connecting again from another
browser context continues the same session on the same desktop.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from hypervisor.base import BootImage
from hypervisor.libvirt_provider import LibvirtProvider
from tests.fixtures.broker import make_broker_config
from tests.fixtures.broker_api import connect, logoff, signed_in

pytestmark = pytest.mark.e2e

SESSION_ACTIONS = ("connect", "reconnect", "disconnect", "logoff")


@pytest.fixture
def pools_config(tmp_path, libvirt_host):
    return make_broker_config(
        tmp_path / "broker.db",
        hosts=[libvirt_host.model_dump(exclude_none=True)],
        pools=[
            {"name": "mois-office", "display_name": "행정안전부", "groups": ["mois"], "kind": "dedicated"},
            {"name": "moef-office", "display_name": "기획재정부", "groups": ["moef"], "kind": "floating"},
        ],
    )


@pytest.fixture
def pools_url(broker_server, pools_config, fake_authenticator, demo_image, libvirt_host) -> Iterator[str]:
    url = broker_server(
        pools_config, authenticator=fake_authenticator, image_resolver=lambda pool: BootImage.of(demo_image)
    )
    yield url
    destroy_all(pools_config, libvirt_host)


def destroy_all(config, host) -> None:
    """Dedicated desktops outlive logoff by design, so the test removes what it started."""
    db = Database(config.database)
    driver = LibvirtProvider(host)
    try:
        with db.transaction() as session:
            names = session.scalars(select(AuditEvent.detail)).all()
        for detail in names:
            if detail and detail.get("desktop"):
                driver.destroy_desktop(detail["desktop"])
    finally:
        driver.close()
        db.close()


def disk_of(host, domain: str) -> str | None:
    """The guest's writable disk (its overlay volume), or None when the domain is gone."""
    conn = libvirt.open(host.uri)
    try:
        try:
            xml = conn.lookupByName(domain).XMLDesc(0)
        except libvirt.libvirtError:
            return None
        root = ET.fromstring(xml)  # noqa: S314 - libvirt's own XML
        sources = root.findall("./devices/disk[@device='disk']/source")
        return sources[0].get("file") or sources[0].get("volume")
    finally:
        conn.close()


def audit_actions(config, username: str) -> list[str]:
    db = Database(config.database)
    try:
        with db.transaction() as session:
            query = (
                select(AuditEvent.action)
                .where(AuditEvent.actor == username, AuditEvent.action.in_(SESSION_ACTIONS))
                .order_by(AuditEvent.id)
            )
            return list(session.scalars(query).all())
    finally:
        db.close()


def test_dedicated_desktop_survives_logoff_and_disconnect(pools_url, pools_config, libvirt_host):
    office = signed_in(pools_url, "kimmj")
    first = connect(office, "mois-office")
    domain = first["desktop"]["name"]
    overlay = disk_of(libvirt_host, domain)
    assert overlay is not None

    # Closing the console is a disconnect: another browser context continues the same session.
    home = signed_in(pools_url, "kimmj")
    again = connect(home, "mois-office")
    assert (again["session_id"], again["desktop"]["name"]) == (first["session_id"], domain)

    logoff(home, first["session_id"])
    assert disk_of(libvirt_host, domain) == overlay

    after = connect(office, "mois-office")
    assert after["session_id"] != first["session_id"]
    assert after["desktop"]["name"] == domain
    assert disk_of(libvirt_host, domain) == overlay
    assert audit_actions(pools_config, "kimmj") == ["connect", "reconnect", "logoff", "connect"]


def test_floating_desktop_is_destroyed_at_logoff_and_the_next_is_fresh(pools_url, libvirt_host):
    client = signed_in(pools_url, "choijw")
    first = connect(client, "moef-office")
    domain = first["desktop"]["name"]
    overlay = disk_of(libvirt_host, domain)
    assert overlay is not None

    logoff(client, first["session_id"])
    assert disk_of(libvirt_host, domain) is None

    second = connect(client, "moef-office")
    assert second["desktop"]["name"] != domain
    assert disk_of(libvirt_host, second["desktop"]["name"]) not in (None, overlay)
    logoff(client, second["session_id"])
