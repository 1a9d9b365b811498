"""A host's console route: defaults from its libvirt URI, and the SSH address format."""

import pytest

from hypervisor.config import HostSettings, SshAddress, resolve_console_route


@pytest.mark.parametrize(
    ("uri", "route"),
    [
        ("qemu+ssh://hv1/system", ("ssh", "root@hv1:22")),
        ("qemu+ssh://vdi@hv1.example:2222/system?sshauth=privkey", ("ssh", "vdi@hv1.example:2222")),
        ("qemu+libssh2://admin@[fd00::1]/system", ("ssh", "admin@[fd00::1]:22")),
        ("qemu+tls://hv1/system", ("direct", None)),
        ("qemu:///system", ("direct", None)),
        ("test:///default", ("direct", None)),
    ],
)
def test_unset_route_comes_from_the_uri(uri, route):
    assert resolve_console_route(uri, None, None) == route
    host = HostSettings(name="hv1", uri=uri)
    assert (host.console_access, host.ssh_address) == route


def test_explicit_route_wins_over_the_uri():
    assert resolve_console_route("qemu+ssh://hv1/system", "direct", None) == ("direct", "root@hv1:22")
    assert resolve_console_route("qemu+tls://hv1/system", "ssh", "hv1-mgmt") == ("ssh", "root@hv1-mgmt:22")


def test_ssh_without_any_address_names_the_field():
    with pytest.raises(ValueError, match=r"^ssh_address: required"):
        resolve_console_route("qemu+tls://hv1/system", "ssh", None)


@pytest.mark.parametrize("text", ["", "root@", "root@hv 1", "root@hv:0", "root@hv:65536", "-x@hv", "hv:port"])
def test_bad_ssh_addresses_are_refused(text):
    with pytest.raises(ValueError):
        SshAddress.parse(text)


def test_ssh_address_round_trips():
    address = SshAddress.parse("vdi@[fd00::2]:2222")
    assert (address.user, address.host, address.port) == ("vdi", "fd00::2", 2222)
    assert SshAddress.parse(str(address)) == address
