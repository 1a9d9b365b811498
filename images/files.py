"""Image version files: what a build or an import hands the catalog, and the checks on the file itself.

The catalog (broker/image_catalog.py) records versions in the database; this module knows only files:
a qcow2's header read by `qemu-img`, its SHA-256, a hashing copy into the image store.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from images.progress import Progress

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20


class CatalogError(Exception):
    """Bad input or a missing entry. `field` names what was wrong, `reason` is machine readable."""

    status = 400

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Qcow2Info:
    virtual_size: int
    actual_size: int


@dataclass(frozen=True)
class NewVersion:
    """What a build or an import knows about a version before it is registered."""

    name: str
    version: str
    file: Path
    os: str = ""
    expected_sha256: str | None = None
    build_log: Path | None = None
    built_by: str = ""
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""


def validate(new: NewVersion) -> None:
    """Check the fields that need no file access; raise CatalogError naming the first bad one."""
    if not NAME_PATTERN.match(new.name):
        raise CatalogError("name", "invalid_name", "use lower-case letters, digits and '-' (at most 64)")
    if not VERSION_PATTERN.match(new.version):
        raise CatalogError("version", "invalid_version", "use letters, digits, '.', '_' and '-' (at most 64)")
    if new.expected_sha256 is not None and not SHA256_PATTERN.match(new.expected_sha256):
        raise CatalogError("sha256", "invalid_sha256", "expected 64 lower-case hexadecimal digits")
    for field, path in (("file", new.file), ("kernel", new.kernel), ("initrd", new.initrd)):
        if path is not None and not path.is_file():
            raise CatalogError(field, "not_found", f"{path} is not a readable file")


def inspect_qcow2(path: Path) -> Qcow2Info:
    """Sizes of a qcow2 file; CatalogError(field="file") when it is anything else.

    The format is read from the file's header by qemu-img, never trusted from its name.
    """
    result = subprocess.run(
        ["qemu-img", "info", "--output", "json", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise CatalogError("file", "unreadable_image", f"qemu-img cannot read {path.name}")
    info = json.loads(result.stdout)
    if info.get("format") != "qcow2":
        raise CatalogError("file", "not_qcow2", f"{path.name} is {info.get('format', 'unknown')}, not qcow2")
    if info.get("backing-filename"):
        raise CatalogError("file", "has_backing_file", f"{path.name} depends on a backing file")
    refuse_qcow2_features(path, info.get("format-specific", {}).get("data", {}))
    return Qcow2Info(virtual_size=int(info["virtual-size"]), actual_size=int(info.get("actual-size", 0)))


# What qemu-img (QEMU 7.2) reports of a plain qcow2. Anything else is a feature a golden image does not need
# and that could make every desktop's QEMU open more than the image: refused rather than trusted.
KNOWN_QCOW2_FIELDS = frozenset(
    {"compat", "compression-type", "lazy-refcounts", "refcount-bits", "corrupt", "extended-l2", "bitmaps"}
)


def refuse_qcow2_features(path: Path, fields: dict) -> None:
    """CatalogError(field="file") for an external data file, encryption, corruption or an unknown feature.

    An external data file (`data_file=`) names a path on the host that QEMU would open for every desktop
    cloned from the image: an import could thereby read or overwrite any file QEMU can reach.
    """
    if "data-file" in fields or "data-file-raw" in fields:
        raise CatalogError("file", "has_data_file", f"{path.name} keeps its data in an external data file")
    if "encrypt" in fields:
        raise CatalogError("file", "encrypted", f"{path.name} is encrypted")
    if fields.get("corrupt"):
        raise CatalogError("file", "corrupt", f"{path.name} is marked corrupt")
    unknown = sorted(set(fields) - KNOWN_QCOW2_FIELDS)
    if unknown:
        raise CatalogError("file", "unknown_feature", f"{path.name} uses qcow2 features {', '.join(unknown)}")


def sha256_file(path: Path, label: str | None = None) -> str:
    digest = hashlib.sha256()
    progress = Progress(label or f"checksum {path.name}", path.stat().st_size)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK), b""):
            digest.update(chunk)
            progress.advance(len(chunk))
    progress.finish()
    return digest.hexdigest()


def copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    progress = Progress(f"copy {source.name}", source.stat().st_size)
    with source.open("rb") as reader, target.open("wb") as writer:
        for chunk in iter(lambda: reader.read(CHUNK), b""):
            digest.update(chunk)
            writer.write(chunk)
            progress.advance(len(chunk))
    progress.finish()
    return digest.hexdigest()
