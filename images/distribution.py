"""Golden image versions on hypervisor hosts: checksums verified on both sides of the upload.

The libvirt driver uploads a version's files as base volumes the first time a desktop of it starts on a
host, and checks the stored size equals the file's. This module adds the checksum:

- before upload, `boot_image()` re-hashes the catalog's file and refuses it if it no longer matches the
  SHA-256 recorded at registration (a file changed on the broker's disk never reaches a host);
- after upload, `verify_on_host()` downloads the base volume through the libvirt storage API and compares
  its SHA-256 with the catalog's. It reads the whole volume (a few seconds per few hundred MiB on a LAN),
  so it is run once per (host, version) when a version is rolled out, not on every desktop start.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import libvirt

from hypervisor.base import BootImage
from hypervisor.config import HostSettings
from images.catalog import CatalogError, sha256_file
from images.progress import Progress
from monitoring.metrics import IMAGE_CHECKSUM_VERIFICATIONS, ChecksumResult, ImageCopy

log = logging.getLogger(__name__)


class ChecksumMismatch(CatalogError):
    """A copy of a version does not hold the bytes the catalog recorded."""

    status = 409


def boot_image(row) -> BootImage:
    """The BootImage of a catalog version (an ImageVersion row) after re-checking its file's SHA-256."""
    actual = sha256_file(Path(row.path), label=f"verify {row.image_name} {row.version}")
    _count(ImageCopy.STORE, actual == row.sha256)
    if actual != row.sha256:
        raise ChecksumMismatch(
            "sha256",
            "checksum_mismatch",
            f"{row.image_name} {row.version}: the stored file changed since import",
        )
    return BootImage(
        name=row.image_name,
        version=row.version,
        disk=Path(row.path),
        kernel=Path(row.kernel) if row.kernel else None,
        initrd=Path(row.initrd) if row.initrd else None,
        cmdline=row.cmdline,
    )


def base_volume_name(row) -> str:
    """The disk volume the libvirt driver uploads for this version (`<name>-<version>.qcow2`)."""
    return f"{row.image_name}-{row.version}.qcow2"


def verify_on_host(host: HostSettings, row) -> None:
    """Download the version's base volume from the host and compare its SHA-256 with the catalog's."""
    conn = libvirt.open(host.uri)
    try:
        volume = conn.storagePoolLookupByName(host.storage_pool).storageVolLookupByName(base_volume_name(row))
        actual = _volume_sha256(conn, volume, f"verify {base_volume_name(row)} on {host.name}")
    except libvirt.libvirtError as exc:
        raise CatalogError(
            "host", "volume_unreadable", f"host {host.name}: cannot read {base_volume_name(row)}: {exc}"
        ) from None
    finally:
        conn.close()
    _count(ImageCopy.HOST, actual == row.sha256)
    if actual != row.sha256:
        raise ChecksumMismatch(
            "sha256",
            "checksum_mismatch",
            f"host {host.name}: {base_volume_name(row)} differs from the catalog",
        )
    log.info("host %s: %s matches the catalog", host.name, base_volume_name(row))


def _count(copy: ImageCopy, matched: bool) -> None:
    result = ChecksumResult.MATCH if matched else ChecksumResult.MISMATCH
    IMAGE_CHECKSUM_VERIFICATIONS.labels(copy=copy.value, result=result.value).inc()


def _volume_sha256(conn: libvirt.virConnect, volume: libvirt.virStorageVol, label: str) -> str:
    size = volume.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
    digest = hashlib.sha256()
    progress = Progress(label, size)

    def receive(_stream, data: bytes, _opaque) -> int:
        digest.update(data)
        progress.advance(len(data))
        return len(data)

    stream = conn.newStream(0)
    volume.download(stream, 0, size, 0)
    stream.recvAll(receive, None)
    stream.finish()
    progress.finish()
    return digest.hexdigest()
