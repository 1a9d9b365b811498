"""Images that exist without the catalog: found on the broker's machine by name.

A pool whose `image` is one of these and that names no `image_version` boots it as it is (the broker
knows no image by name; it asks here). Each entry finds the image's files for the image settings, or
raises ImageError (images/boot.py) saying how to make them; the files have the attributes
hypervisor.base.BootImage.of reads (name, version, disk, kernel, initrd, cmdline).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from images.config import ImageSettings
from images.demo import find_demo_image

BUILT_IN_IMAGES: dict[str, Callable[[ImageSettings], Any]] = {
    "demo": find_demo_image,
}
