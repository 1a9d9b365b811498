"""When the driver runs desktops under KVM and when it falls back to TCG.

Real hosts cannot be switched between these cases, so a stand-in connection answers the two questions
the decision rests on.
"""

import libvirt
import pytest

from hypervisor.libvirt_provider import kvm_usable


class StandInConnection:
    def __init__(self, kvm_domains: bool, cpu_features: list[str]) -> None:
        self.kvm_domains = kvm_domains
        self.cpu_features = cpu_features

    def getDomainCapabilities(self, emulator, arch, machine, virttype, flags):
        if not self.kvm_domains:
            raise libvirt.libvirtError("KVM is not supported on this host")
        return "<domainCapabilities/>"

    def getCapabilities(self):
        features = "".join(f"<feature name='{name}'/>" for name in self.cpu_features)
        return f"<capabilities><host><cpu><arch>x86_64</arch>{features}</cpu></host></capabilities>"


@pytest.mark.parametrize(
    ("kvm_domains", "features", "usable"),
    [
        (True, ["vmx", "sse2"], True),
        (True, ["svm"], True),
        (True, ["sse2", "hypervisor"], False),  # a /dev/kvm without hardware virtualization behind it
        (False, ["vmx"], False),
    ],
)
def test_kvm_needs_kvm_domains_and_hardware_virtualization(kvm_domains, features, usable):
    assert kvm_usable(StandInConnection(kvm_domains, features)) is usable
