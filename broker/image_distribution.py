"""Golden image versions on hypervisor hosts: checksums verified on both sides of the upload.

The hypervisor driver uploads a version's files as base volumes (the first time a desktop of it starts on
a host, or at rollout through `distribute()`), checks the stored size equals the file's and, because the
BootImage carries the catalog's SHA-256, reads the uploaded disk back through the driver and compares:

- before upload, `boot_image()` re-hashes the catalog's file and refuses it if it no longer matches the
  SHA-256 recorded at registration (a file changed on the broker's disk never reaches a host);
- after upload, the driver hashes the host's copy and deletes it when it differs (nothing half-made is
  left for desktops to boot from); `verify_on_host()` repeats that check for a copy already on a host.
  Reading a whole volume takes seconds per few hundred MiB, so it happens once per (host, version).

This module never speaks libvirt itself: hashing on the host is a driver method.
"""

from __future__ import annotations

import logging
from pathlib import Path

from broker.image_catalog import CatalogError
from hypervisor import driver_for
from hypervisor.base import BootImage, HypervisorError, ImageChecksumMismatch
from hypervisor.config import HostSettings
from images.files import sha256_file
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
        sha256=row.sha256,
    )


def base_volume_name(row) -> str:
    """The disk volume the libvirt driver uploads for this version (`<name>-<version>.qcow2`)."""
    return f"{row.image_name}-{row.version}.qcow2"


def distribute(host: HostSettings, row) -> None:
    """Put a version on a host: refused before upload if the store's file changed, and after upload if
    the host's copy differs (the driver then removes it). Either error names the version and the host."""
    image = boot_image(row)
    try:
        uploaded = _with_driver(host, lambda driver: driver.upload_image(image))
    except ImageChecksumMismatch as exc:
        _count(ImageCopy.HOST, matched=False)
        raise ChecksumMismatch("sha256", "checksum_mismatch", str(exc)) from None
    if not uploaded:
        verify_on_host(host, row)  # a copy from an earlier upload: hash it where it is
        return
    _count(ImageCopy.HOST, matched=True)
    log.info("host %s: %s %s uploaded and verified", host.name, row.image_name, row.version)


def verify_on_host(host: HostSettings, row) -> None:
    """Read the version's disk back from the host and compare its SHA-256 with the catalog's."""
    image = BootImage(name=row.image_name, version=row.version, disk=Path(row.path), sha256=row.sha256)
    actual = _with_driver(host, lambda driver: driver.image_sha256(image))
    _count(ImageCopy.HOST, actual == row.sha256)
    if actual != row.sha256:
        raise ChecksumMismatch(
            "sha256",
            "checksum_mismatch",
            f"host {host.name}: {base_volume_name(row)} ({row.image_name} {row.version}) differs from "
            "the catalog",
        )
    log.info("host %s: %s matches the catalog", host.name, base_volume_name(row))


def _with_driver(host: HostSettings, action):
    try:
        driver = driver_for(host)
    except HypervisorError as exc:
        raise CatalogError("host", "no_driver", str(exc)) from None
    try:
        return action(driver)
    except ImageChecksumMismatch:
        raise
    except HypervisorError as exc:
        raise CatalogError("host", "host_error", str(exc)) from None
    finally:
        driver.close()


def _count(copy: ImageCopy, matched: bool) -> None:
    result = ChecksumResult.MATCH if matched else ChecksumResult.MISMATCH
    IMAGE_CHECKSUM_VERIFICATIONS.labels(copy=copy.value, result=result.value).inc()
