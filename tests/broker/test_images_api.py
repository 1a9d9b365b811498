"""/api/v1/images: the catalog as administrators see it through the broker (read only)."""

from __future__ import annotations

import subprocess

import pytest

from broker.db import Database
from broker.image_catalog import Catalog, NewVersion
from tests.fixtures.broker import COOKIE_SECRET, TEST_IMAGE, BrokerClient, make_broker_config
from tests.fixtures.broker_api import signed_in


@pytest.fixture
def config(tmp_path):
    return make_broker_config(
        tmp_path / "images.db",
        broker={
            "cookie_secret": COOKIE_SECRET,
            "gateway_url": "ws://127.0.0.1:9/ws",
            "admin_groups": ["mois"],
        },
    )


@pytest.fixture
def url(broker_server, config, fake_authenticator, unreachable_providers, tmp_path):
    started = broker_server(
        config,
        authenticator=fake_authenticator,
        providers=unreachable_providers,
        image_resolver=lambda p: TEST_IMAGE,
    )
    disk = tmp_path / "office.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "32M"], check=True)
    database = Database(config.database)
    try:
        for version in ("1", "2"):
            with database.transaction() as session:
                new = NewVersion(name="mois-office", version=version, file=disk, os="debian-12")
                Catalog(tmp_path / "store").register(session, new)
    finally:
        database.close()
    return started


def test_administrator_lists_images_with_their_versions(url):
    response = signed_in(url, "kimmj").get("/api/v1/images")

    assert response.status == 200
    (image,) = response.json()["images"]
    assert image["name"] == "mois-office" and image["os"] == "debian-12"
    assert [v["version"] for v in image["versions"]] == ["1", "2"]
    assert all(len(v["sha256"]) == 64 and v["immutable"] for v in image["versions"])


def test_show_gives_the_newest_or_the_asked_version(url):
    admin = signed_in(url, "kimmj")

    assert admin.get("/api/v1/images/mois-office").json()["version"] == "2"
    assert admin.get("/api/v1/images/mois-office?version=1").json()["version"] == "1"


def test_unknown_image_or_version_is_404_naming_the_field(url):
    admin = signed_in(url, "kimmj")

    missing = admin.get("/api/v1/images/nothing")
    wrong_version = admin.get("/api/v1/images/mois-office?version=9")

    assert missing.status == 404 and missing.json()["error"]["field"] == "name"
    assert wrong_version.status == 404 and wrong_version.json()["error"]["field"] == "version"


def test_non_administrator_is_forbidden(url):
    assert signed_in(url, "choijw").get("/api/v1/images").status == 403


def test_anonymous_is_refused(url):
    assert BrokerClient(url).get("/api/v1/images").status == 401
