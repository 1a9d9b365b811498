"""Choosing a host's desktop provider by name (hypervisor/registry.py) and the contract's defaults."""

import pytest
from pydantic import ValidationError

from hypervisor.base import HypervisorError, Unsupported
from hypervisor.config import HostSettings
from hypervisor.libvirt_provider import LibvirtProvider
from hypervisor.provider import provider_for
from hypervisor.registry import provider_class, provider_names


@pytest.mark.parametrize(
    "uri", ["qemu:///system", "qemu+ssh://root@host-1/system", "qemu+tls://host-1/system", "test:///default"]
)
def test_libvirt_is_the_default_provider_for_libvirt_uris(uri):
    provider = provider_for(HostSettings(name="host-1", uri=uri))
    assert isinstance(provider, LibvirtProvider)
    assert (provider.host.provider, provider.host.uri) == ("libvirt", uri)
    LibvirtProvider.check_uri(uri)


def test_the_registry_maps_names_to_classes(toy_provider):
    assert provider_class("libvirt") is LibvirtProvider
    assert provider_class("toy") is toy_provider
    assert provider_names() == ["libvirt", "session-host", "toy"]
    provider = provider_for(HostSettings(name="host-1", provider="toy", uri="toy:///host-1"))
    assert isinstance(provider, toy_provider)


def test_an_unknown_provider_name_is_refused_naming_the_field():
    with pytest.raises(ValidationError) as raised:
        HostSettings(name="host-1", provider="vmware", uri="vmware://vcenter/dc")
    (error,) = raised.value.errors()
    assert error["loc"] == ("provider",)
    assert "unknown desktop provider 'vmware' (known: libvirt, session-host)" in error["msg"]
    with pytest.raises(ValueError, match="vmware"):
        provider_class("vmware")


def test_libvirt_refuses_uris_of_other_providers():
    with pytest.raises(ValueError, match="libvirt URI"):
        LibvirtProvider.check_uri("vmware://vcenter/dc")


def test_optional_operations_answer_as_the_contract_says(toy_provider):
    provider = provider_for(HostSettings(name="host-1", provider="toy", uri="toy:///host-1"))
    for operation in (
        lambda: provider.stop_desktop("desk-1", 5.0),
        lambda: provider.suspend_desktop("desk-1"),
        lambda: provider.start_desktop("desk-1"),
    ):
        with pytest.raises(Unsupported) as raised:
            operation()
        assert isinstance(raised.value, HypervisorError) and raised.value.host == "host-1"
        assert "the toy provider cannot" in str(raised.value)
    assert provider.readiness("desk-1").ready  # it cannot look inside: running counts as ready
    assert provider.watch_events(lambda event: None) is False
    assert provider.host_stats().running_desktops == 0
    assert provider.probe() == "reachable"
