"""Catalog versions reaching hosts: the file is re-hashed before upload, the volume after."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from broker.db import Database
from broker.db.migrate import upgrade
from hypervisor.base import DesktopSpec
from hypervisor.libvirt_driver import LibvirtDriver
from images.catalog import Catalog, NewVersion
from images.distribution import ChecksumMismatch, base_volume_name, boot_image, verify_on_host
from tests.fixtures.broker import make_broker_config


@pytest.fixture
def catalog_row(tmp_path, demo_image, libvirt_session_token):
    upgrade(f"sqlite:///{tmp_path / 'vdi.db'}")
    database = Database(make_broker_config(tmp_path / "vdi.db").database)
    new = NewVersion(
        name="demo-dist",
        version=f"v{libvirt_session_token}-{tmp_path.name[-6:].strip('_')}",
        file=demo_image.disk,
        kernel=demo_image.kernel,
        initrd=demo_image.initrd,
        cmdline=demo_image.boot_image().cmdline,
    )
    with database.transaction() as session:
        row = Catalog(tmp_path / "store").register(session, new)
    yield row
    database.close()


def checks(copy: str, result: str) -> float:
    labels = {"copy": copy, "result": result}
    return REGISTRY.get_sample_value("vdi_image_checksum_verifications_total", labels) or 0.0


def test_uploaded_base_volume_matches_the_catalog(catalog_row, libvirt_host, desktop_name):
    driver = LibvirtDriver(libvirt_host)
    try:
        driver.create_desktop(DesktopSpec(domain_name=desktop_name(), image=boot_image(catalog_row)))
    finally:
        driver.close()
    before = checks("host", "match")

    verify_on_host(libvirt_host, catalog_row)

    assert checks("host", "match") == before + 1


def test_a_changed_file_is_refused_before_upload(catalog_row):
    path = Path(catalog_row.path)
    path.chmod(0o644)
    with path.open("r+b") as stream:
        stream.seek(200_000)
        stream.write(b"tampered")
    before = checks("store", "mismatch")

    with pytest.raises(ChecksumMismatch) as caught:
        boot_image(catalog_row)

    assert caught.value.field == "sha256"
    assert checks("store", "mismatch") == before + 1


def test_a_volume_with_other_bytes_is_reported(catalog_row, libvirt_host, libvirtd, tmp_path):
    driver = LibvirtDriver(libvirt_host)
    try:
        driver._ensure_pool(driver._connection())  # the session's pool, created as the driver would
    finally:
        driver.close()
    other = tmp_path / "other.bin"
    other.write_bytes(b"\0" * 4096)
    name = base_volume_name(catalog_row)
    virsh = ["virsh", "-c", libvirt_host.uri]
    subprocess.run(
        [*virsh, "vol-create-as", libvirt_host.storage_pool, name, "0"], check=True, capture_output=True
    )
    subprocess.run([*virsh, "vol-upload", name, str(other), "--pool", libvirt_host.storage_pool], check=True)

    with pytest.raises(ChecksumMismatch) as caught:
        verify_on_host(libvirt_host, catalog_row)

    assert "differs from the catalog" in str(caught.value)
