"""Catalog versions reaching hosts: the file is re-hashed before upload, the volume after."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import libvirt
import pytest
from prometheus_client import REGISTRY

from broker.db import Database
from broker.db.migrate import upgrade
from broker.image_catalog import Catalog, NewVersion
from broker.image_distribution import (
    ChecksumMismatch,
    base_volume_name,
    boot_image,
    distribute,
    verify_on_host,
)
from hypervisor.base import BootImage, DesktopSpec, ImageChecksumMismatch
from hypervisor.libvirt_provider import LibvirtProvider
from tests.fixtures.broker import make_broker_config
from tests.fixtures.images import CONFIG_TOML, vdi


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
        cmdline=BootImage.of(demo_image).cmdline,
    )
    with database.transaction() as session:
        row = Catalog(tmp_path / "store").register(session, new)
    yield row
    database.close()


def checks(copy: str, result: str) -> float:
    labels = {"copy": copy, "result": result}
    return REGISTRY.get_sample_value("vdi_image_checksum_verifications_total", labels) or 0.0


def test_uploaded_base_volume_matches_the_catalog(catalog_row, libvirt_host, desktop_name):
    driver = LibvirtProvider(libvirt_host)
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
    driver = LibvirtProvider(libvirt_host)
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


def volume_names(host) -> set[str]:
    conn = libvirt.open(host.uri)
    try:
        pool = conn.storagePoolLookupByName(host.storage_pool)
        pool.refresh(0)
        return {volume.name() for volume in pool.listAllVolumes(0)}
    except libvirt.libvirtError:
        return set()  # no pool yet: nothing was uploaded
    finally:
        conn.close()


def test_distribute_uploads_and_verifies_on_the_host(catalog_row, libvirt_host):
    before = checks("host", "match")

    distribute(libvirt_host, catalog_row)

    assert base_volume_name(catalog_row) in volume_names(libvirt_host)
    assert checks("host", "match") == before + 1
    distribute(libvirt_host, catalog_row)  # already there: hashed where it is, not uploaded again
    assert checks("host", "match") == before + 2


def test_a_changed_file_never_reaches_the_host(catalog_row, libvirt_host):
    path = Path(catalog_row.path)
    path.chmod(0o644)
    with path.open("r+b") as stream:
        stream.write(b"tampered")

    with pytest.raises(ChecksumMismatch) as caught:
        distribute(libvirt_host, catalog_row)

    assert caught.value.field == "sha256"
    assert catalog_row.version in str(caught.value)
    assert base_volume_name(catalog_row) not in volume_names(libvirt_host)


def test_an_upload_that_differs_from_the_catalog_is_removed(catalog_row, libvirt_host, desktop_name):
    """The host-side check: bytes on the host that are not the catalog's leave no volume and no desktop."""
    wrong = dataclasses.replace(boot_image(catalog_row), sha256="0" * 64)
    name = desktop_name()
    driver = LibvirtProvider(libvirt_host)
    try:
        with pytest.raises(ImageChecksumMismatch) as caught:
            driver.create_desktop(DesktopSpec(domain_name=name, image=wrong))
        assert driver.desktop_state(name) == "missing"
    finally:
        driver.close()

    message = str(caught.value)
    assert f"host {libvirt_host.name}" in message
    assert f"{catalog_row.image_name} {catalog_row.version}" in message
    assert "sha256" in message
    leftovers = {v for v in volume_names(libvirt_host) if catalog_row.version in v or v.startswith(name)}
    assert leftovers == set()


def test_vdi_image_distribute_names_the_host_and_version(catalog_row, libvirt_host, tmp_path):
    config = tmp_path / "vdi.toml"
    host = libvirt_host
    config.write_text(
        CONFIG_TOML.format(db=tmp_path / "vdi.db", store=tmp_path / "store").replace(
            'name = "local"\n',
            f'name = "{host.name}"\nuri = "{host.uri}"\nstorage_pool = "{host.storage_pool}"\n'
            f'storage_path = "{host.storage_path}"\n',
        )
    )

    unknown = vdi(config, "distribute", catalog_row.image_name, "--host", "nowhere")
    done = vdi(config, "distribute", catalog_row.image_name, "--version", catalog_row.version)

    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "vdi image: host: no host named nowhere in the configuration",
    )
    assert done.returncode == 0, done.stderr
    assert (
        f"host {host.name}: {catalog_row.image_name} {catalog_row.version} uploaded and verified"
        in done.stdout
    )
    assert base_volume_name(catalog_row) in volume_names(host)
    # Not a terminal: the upload's progress is plain lines, its start and its end, no bar redrawn in place.
    step = f"host {host.name}: upload {catalog_row.image_name} {catalog_row.version}"
    assert f"{step} ...\n" in done.stderr and f"{step} done in " in done.stderr
    assert "\r" not in done.stderr
