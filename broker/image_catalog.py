"""The golden image catalog: images and their immutable versions, recorded in the shared database.

A version is registered only whole: the qcow2 is checked to be qcow2 (`qemu-img info`), copied into the
image store while its SHA-256 is computed, compared with the checksum the caller expects, and only then
written to the database in one transaction. Any failure removes the copy and registers nothing.
The file checks live in images/files.py; this module owns the database side. It never touches a host.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.db.models import Image, ImageVersion
from images.files import CatalogError, NewVersion, Qcow2Info, copy_hashing, inspect_qcow2, validate

__all__ = ["Catalog", "CatalogError", "DuplicateVersion", "ImageNotFound", "NewVersion", "describe"]

log = logging.getLogger(__name__)


class DuplicateVersion(CatalogError):
    status = 409


class ImageNotFound(CatalogError):
    status = 404


class Catalog:
    """Registers and reads image versions. `store` is where registered files live (never changed after)."""

    def __init__(self, store: Path) -> None:
        self.store = store

    def register(self, session: Session, new: NewVersion) -> ImageVersion:
        """Copy the files into the store, verify them, record the version; all or nothing."""
        validate(new)
        self._refuse_duplicate(session, new)
        info = inspect_qcow2(new.file)
        staging = self._stage(new)
        # The staging name's random part stays in the final one, so a concurrent registration of the same
        # version (which the database will refuse) never touches this one's files.
        target = staging.with_name(staging.name.lstrip("."))
        try:
            sha256 = self._verify_staged(staging, new)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            return self._record(session, new, target, sha256, info)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def _refuse_duplicate(self, session: Session, new: NewVersion) -> None:
        self.ensure_new_version(session, new.name, new.version)

    def ensure_new_version(self, session: Session, name: str, version: str) -> None:
        """Bad name or version, or DuplicateVersion: lets a build fail before it spends minutes."""
        validate(NewVersion(name=name, version=version, file=None))  # type: ignore[arg-type]
        if self._find_version(session, name, version) is not None:
            raise DuplicateVersion("version", "duplicate_version", f"{name} {version} is already registered")

    def _stage(self, new: NewVersion) -> Path:
        (self.store / "catalog").mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{new.name}-{new.version}.", dir=self.store / "catalog"))
        staging.chmod(0o755)
        return staging

    def _verify_staged(self, staging: Path, new: NewVersion) -> str:
        sha256 = copy_hashing(new.file, staging / "disk.qcow2")
        if new.expected_sha256 is not None and sha256 != new.expected_sha256:
            raise CatalogError(
                "sha256", "checksum_mismatch", f"{new.file.name} has SHA-256 {sha256}, not the one given"
            )
        for name, path in (("vmlinuz", new.kernel), ("initrd.img", new.initrd)):
            if path is not None:
                shutil.copyfile(path, staging / name)
        for path in staging.iterdir():
            # QEMU (libvirt-qemu) and whoever uploads to hosts read these; nobody writes them again.
            path.chmod(0o444)
        if new.build_log is not None:
            shutil.copyfile(new.build_log, staging / "build.log")
        return sha256

    def _record(
        self, session: Session, new: NewVersion, target: Path, sha256: str, info: Qcow2Info
    ) -> ImageVersion:
        if session.get(Image, new.name) is None:
            session.add(Image(name=new.name, os=new.os))
        row = ImageVersion(
            image_name=new.name,
            version=new.version,
            path=str(target / "disk.qcow2"),
            sha256=sha256,
            size_bytes=(target / "disk.qcow2").stat().st_size,
            virtual_size_bytes=info.virtual_size,
            os=new.os,
            build_log=str(target / "build.log") if new.build_log else None,
            kernel=str(target / "vmlinuz") if new.kernel else None,
            initrd=str(target / "initrd.img") if new.initrd else None,
            cmdline=new.cmdline,
            built_by=new.built_by,
            immutable=True,
        )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            # A concurrent registration of the same version won the unique constraint.
            raise DuplicateVersion(
                "version", "duplicate_version", f"{new.name} {new.version} is already registered"
            ) from None
        log.info("registered image %s version %s (%d bytes)", new.name, new.version, row.size_bytes)
        return row

    @staticmethod
    def _find_version(session: Session, name: str, version: str) -> ImageVersion | None:
        query = select(ImageVersion).where(ImageVersion.image_name == name, ImageVersion.version == version)
        return session.scalars(query).first()

    @staticmethod
    def images(session: Session) -> list[tuple[Image, list[ImageVersion]]]:
        images = session.scalars(select(Image).order_by(Image.name)).all()
        return [(image, Catalog.versions(session, image.name)) for image in images]

    @staticmethod
    def versions(session: Session, name: str) -> list[ImageVersion]:
        query = select(ImageVersion).where(ImageVersion.image_name == name)
        return list(session.scalars(query.order_by(ImageVersion.created_at, ImageVersion.id)).all())

    @staticmethod
    def show(session: Session, name: str, version: str | None = None) -> ImageVersion:
        """One version (the newest without `version`); ImageNotFound names the field."""
        if version is not None:
            row = Catalog._find_version(session, name, version)
            if row is None:
                raise ImageNotFound("version", "unknown_version", f"{name} has no version {version}")
            return row
        versions = Catalog.versions(session, name)
        if not versions:
            raise ImageNotFound("name", "unknown_image", f"no image named {name}")
        return versions[-1]


def catalog(session: Session) -> list[dict]:
    """Every image with its versions (oldest first) as plain data, for the API and the admin console."""
    return [
        {"name": image.name, "os": image.os, "versions": [describe(v) for v in versions]}
        for image, versions in Catalog.images(session)
    ]


def describe(row: ImageVersion) -> dict:
    """A version as plain data for the command line and the API."""
    return {
        "name": row.image_name,
        "version": row.version,
        "os": row.os,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "virtual_size_bytes": row.virtual_size_bytes,
        "path": row.path,
        "kernel": row.kernel,
        "initrd": row.initrd,
        "cmdline": row.cmdline,
        "build_log": row.build_log,
        "built_by": row.built_by,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "immutable": row.immutable,
    }
