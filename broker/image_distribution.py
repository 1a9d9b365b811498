"""Golden image versions on hypervisor hosts: checksums verified on both sides of the upload.

The host's desktop provider uploads a version's files as base volumes (the first time a desktop of it starts on
a host, or at rollout through `distribute()`), checks the stored size equals the file's and, because the
BootImage carries the catalog's SHA-256, reads the uploaded disk back through the provider and compares:

- before upload, `boot_image()` re-hashes the catalog's file and refuses it if it no longer matches the
  SHA-256 recorded at registration (a file changed on the broker's disk never reaches a host);
- after upload, the provider hashes the host's copy and deletes it when it differs (nothing half-made is
  left for desktops to boot from); `verify_on_host()` repeats that check for a copy already on a host.
  Reading a whole volume takes seconds per few hundred MiB, so it happens once per (host, version).

This module never speaks libvirt itself: hashing on the host is a provider method. Hosts whose provider
starts desktops without an image (`needs_image` false) are skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

from broker.image_catalog import CatalogError
from hypervisor.base import BootImage, HypervisorError, ImageChecksumMismatch
from hypervisor.config import HostSettings
from hypervisor.provider import DesktopProvider, provider_for
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
    """The disk volume the libvirt provider uploads for this version (`<name>-<version>.qcow2`)."""
    return f"{row.image_name}-{row.version}.qcow2"


def distribute(host: HostSettings, row) -> bool:
    """Put a version on a host: refused before upload if the store's file changed, and after upload if
    the host's copy differs (the provider then removes it). Either error names the version and the host.

    False when the host's provider needs no image, so there was nothing to put there.
    """
    image = boot_image(row)
    try:
        uploaded = _with_provider(host, lambda provider: _upload(provider, image))
    except ImageChecksumMismatch as exc:
        _count(ImageCopy.HOST, matched=False)
        raise ChecksumMismatch("sha256", "checksum_mismatch", str(exc)) from None
    if uploaded is None:
        log.info("host %s: its %s provider needs no image; skipped", host.name, host.provider)
        return False
    if not uploaded:
        verify_on_host(host, row)  # a copy from an earlier upload: hash it where it is
        return True
    _count(ImageCopy.HOST, matched=True)
    log.info("host %s: %s %s uploaded and verified", host.name, row.image_name, row.version)
    return True


def _upload(provider: DesktopProvider, image: BootImage) -> bool | None:
    """True: copied now, False: already there, None: the provider starts desktops without an image."""
    return provider.upload_image(image) if provider.needs_image else None


def verify_on_host(host: HostSettings, row) -> None:
    """Read the version's disk back from the host and compare its SHA-256 with the catalog's."""
    image = BootImage(name=row.image_name, version=row.version, disk=Path(row.path), sha256=row.sha256)
    actual = _with_provider(host, lambda provider: provider.image_sha256(image))
    _count(ImageCopy.HOST, actual == row.sha256)
    if actual != row.sha256:
        raise ChecksumMismatch(
            "sha256",
            "checksum_mismatch",
            f"host {host.name}: {base_volume_name(row)} ({row.image_name} {row.version}) differs from "
            "the catalog",
        )
    log.info("host %s: %s matches the catalog", host.name, base_volume_name(row))


def _with_provider(host: HostSettings, action):
    try:
        provider = provider_for(host)
    except HypervisorError as exc:
        raise CatalogError("host", "no_provider", str(exc)) from None
    try:
        return action(provider)
    except ImageChecksumMismatch:
        raise
    except HypervisorError as exc:
        raise CatalogError("host", "host_error", str(exc)) from None
    finally:
        provider.close()


def _count(copy: ImageCopy, matched: bool) -> None:
    result = ChecksumResult.MATCH if matched else ChecksumResult.MISMATCH
    IMAGE_CHECKSUM_VERIFICATIONS.labels(copy=copy.value, result=result.value).inc()
