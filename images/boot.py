"""Boot files of the machine images are built on: its newest kernel that has modules installed."""

from __future__ import annotations

import re
from pathlib import Path

BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")


class ImageError(Exception):
    """An image could not be built or found; the message names the file, tool or package involved."""


def newest_kernel_version() -> str:
    versions = [
        path.name.removeprefix("vmlinuz-")
        for path in BOOT_DIR.glob("vmlinuz-*")
        if (MODULES_ROOT / path.name.removeprefix("vmlinuz-") / "modules.dep").exists()
    ]
    if not versions:
        raise ImageError(
            f"no kernel with modules in {BOOT_DIR} and {MODULES_ROOT} (install linux-image-amd64)"
        )
    return max(versions, key=_version_key)


def _version_key(version: str) -> list[tuple[int, str]]:
    # "6.1.0-56-amd64" sorts after "6.1.0-9-amd64": compare the numeric parts as numbers.
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.-]", version)]
