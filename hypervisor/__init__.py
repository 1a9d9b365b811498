"""Hypervisor drivers: what the broker uses to start, stop and find desktops on hosts."""

from __future__ import annotations

from urllib.parse import urlsplit

from hypervisor.base import Driver, HypervisorError
from hypervisor.config import HostSettings

# libvirt URI schemes the libvirt driver speaks: qemu, qemu+ssh, qemu+tls, qemu+tcp, qemu+unix, and the
# test driver that stands in for hosts in placement runs at scale.
LIBVIRT_SCHEMES = ("qemu", "test")


def driver_for(host: HostSettings) -> Driver:
    """The driver for a host, chosen by its URI's scheme (the part before any '+transport')."""
    scheme = urlsplit(host.uri).scheme.split("+", 1)[0]
    if scheme in LIBVIRT_SCHEMES:
        from hypervisor.libvirt_driver import LibvirtDriver  # libvirt-python loads a C library; only on use

        return LibvirtDriver(host)
    raise HypervisorError(host.name, f"uri: no driver for scheme {scheme or '(none)'!r}")
