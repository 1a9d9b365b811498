"""libvirt XML documents of a desktop: its domain, its volumes, and the storage pool that holds them.

Built with ElementTree so every value is escaped, never spliced into strings. Parsing helpers read back the
few facts the driver needs from libvirt's live XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import quote

# Our own namespace in <metadata>: how list_desktops tells our domains from anyone else's on a host.
NAMESPACE = "https://smartwork-vdi.org/xmlns/desktop/1"
NAMESPACE_PREFIX = "smartwork"
ET.register_namespace(NAMESPACE_PREFIX, NAMESPACE)

ARCH = "x86_64"
# x86 kernels accept 2048 bytes of command line; URL-quoting can make a character take 9 bytes.
LABEL_MAX_CHARS = 120


@dataclass(frozen=True)
class DomainPlan:
    """Everything the domain definition of one desktop depends on, with host-side paths."""

    name: str
    virt_type: str  # "kvm", or "qemu" for TCG
    memory_mib: int
    vcpus: int
    disk: str
    vnc_listen: str
    image_name: str
    image_version: str
    label: str = ""
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    console_log: str | None = None
    vnc_password: str | None = field(default=None, repr=False)


def kernel_cmdline(image_cmdline: str, domain_name: str, label: str) -> str:
    """The image's own command line plus what its init shows on screen: the desktop's name and label.

    The label is URL-quoted so spaces, quotes and non-ASCII survive the kernel's word splitting.
    """
    words = [image_cmdline.strip(), f"vdi.desktop={domain_name}"]
    if label:
        words.append("vdi.label=" + quote(label[:LABEL_MAX_CHARS], safe=""))
    return " ".join(word for word in words if word)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _to_string(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def domain_xml(plan: DomainPlan) -> str:
    domain = ET.Element("domain", type=plan.virt_type)
    _sub(domain, "name", plan.name)
    _metadata(domain, plan)
    _sub(domain, "memory", str(plan.memory_mib), unit="MiB")
    _sub(domain, "vcpu", str(plan.vcpus))
    _os(domain, plan)
    features = _sub(domain, "features")
    _sub(features, "acpi")
    _sub(domain, "clock", offset="utc")
    # A desktop that powers itself off is finished; the broker decides whether to start it again.
    _sub(domain, "on_poweroff", "destroy")
    _sub(domain, "on_reboot", "restart")
    _sub(domain, "on_crash", "destroy")
    _devices(domain, plan)
    return _to_string(domain)


def _metadata(domain: ET.Element, plan: DomainPlan) -> None:
    metadata = _sub(domain, "metadata")
    desktop = _sub(metadata, f"{{{NAMESPACE}}}desktop")
    _sub(desktop, f"{{{NAMESPACE}}}image", name=plan.image_name, version=plan.image_version)
    if plan.label:
        _sub(desktop, f"{{{NAMESPACE}}}label", plan.label)


def _os(domain: ET.Element, plan: DomainPlan) -> None:
    os_element = _sub(domain, "os")
    _sub(os_element, "type", "hvm", arch=ARCH)
    if plan.kernel:
        # Direct kernel boot: the image has no boot loader, and this skips one on every start.
        _sub(os_element, "kernel", plan.kernel)
        if plan.initrd:
            _sub(os_element, "initrd", plan.initrd)
        _sub(os_element, "cmdline", plan.cmdline)
    else:
        _sub(os_element, "boot", dev="hd")


def _devices(domain: ET.Element, plan: DomainPlan) -> None:
    devices = _sub(domain, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2")
    _sub(disk, "source", file=plan.disk)
    _sub(disk, "target", dev="vda", bus="virtio")
    graphics = _sub(devices, "graphics", type="vnc", port="-1", autoport="yes", listen=plan.vnc_listen)
    if plan.vnc_password:
        # QEMU then offers only VNC authentication: the gateway holds the password, browsers never do.
        graphics.set("passwd", plan.vnc_password)
    _sub(graphics, "listen", type="address", address=plan.vnc_listen)
    # Plain VGA shows the kernel's text console, which is what the demo image draws on.
    video = _sub(devices, "video")
    _sub(video, "model", type="vga", heads="1", primary="yes")
    if plan.console_log:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=plan.console_log, append="on")
        _sub(serial, "target", port="0")
    # Nothing a text desktop needs: keep the guest's device list (and its attack surface) short.
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")


def dir_pool_xml(name: str, path: str) -> str:
    pool = ET.Element("pool", type="dir")
    _sub(pool, "name", name)
    target = _sub(pool, "target")
    _sub(target, "path", path)
    permissions = _sub(target, "permissions")
    # QEMU runs as another user and must traverse the directory to reach the images.
    _sub(permissions, "mode", "0711")
    return _to_string(pool)


def volume_xml(name: str, capacity_bytes: int, fmt: str, mode: str, backing: str | None = None) -> str:
    """A file volume; with `backing`, a qcow2 overlay whose reads fall through to that base image."""
    volume = ET.Element("volume", type="file")
    _sub(volume, "name", name)
    _sub(volume, "capacity", str(capacity_bytes), unit="bytes")
    target = _sub(volume, "target")
    _sub(target, "format", type=fmt)
    permissions = _sub(target, "permissions")
    _sub(permissions, "mode", mode)
    if backing:
        store = _sub(volume, "backingStore")
        _sub(store, "path", backing)
        _sub(store, "format", type="qcow2")
    return _to_string(volume)


def vnc_endpoint(live_xml: str) -> tuple[str, int] | None:
    """(listen address, port) of the domain's VNC server, or None until libvirt has assigned a port."""
    root = ET.fromstring(live_xml)  # noqa: S314 - libvirt's own XML, not user input
    graphics = root.find("./devices/graphics[@type='vnc']")
    if graphics is None:
        return None
    port = int(graphics.get("port", "-1"))
    if port <= 0:
        return None
    listen = graphics.find("./listen[@type='address']")
    address = listen.get("address") if listen is not None else None
    return address or graphics.get("listen") or "127.0.0.1", port


def backing_store_path(volume_live_xml: str) -> str | None:
    path = ET.fromstring(volume_live_xml).find("./backingStore/path")  # noqa: S314 - libvirt's own XML
    return path.text if path is not None else None
