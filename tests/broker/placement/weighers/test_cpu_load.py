"""The cpu_load weigher: a lower CPU load weighs more."""

from broker.placement.weighers.cpu_load import CpuLoadWeigher
from tests.fixtures.placement import host, raw


def test_cpu_load_prefers_idle_hosts_and_counts_unreported_as_zero():
    assert raw(CpuLoadWeigher(), [host("busy", cpu_load=0.9), host("new")]) == [-0.9, 0.0]
