"""Choosing a driver by the host's URI."""

import pytest

from hypervisor import driver_for
from hypervisor.base import HypervisorError
from hypervisor.config import HostSettings
from hypervisor.libvirt_driver import LibvirtDriver


@pytest.mark.parametrize(
    "uri", ["qemu:///system", "qemu+ssh://root@host-1/system", "qemu+tls://host-1/system", "test:///default"]
)
def test_libvirt_uris_get_the_libvirt_driver(uri):
    driver = driver_for(HostSettings(name="host-1", uri=uri))
    assert isinstance(driver, LibvirtDriver)
    assert driver.host.uri == uri


def test_unknown_scheme_is_an_error_naming_host_and_field():
    with pytest.raises(HypervisorError) as raised:
        driver_for(HostSettings(name="host-1", uri="vmware://vcenter/dc"))
    assert raised.value.host == "host-1"
    assert "uri" in str(raised.value)
