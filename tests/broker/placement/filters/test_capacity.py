"""The capacity filter: room for one more desktop in slots, vCPUs and RAM with overcommit."""

from broker.placement.filters.capacity import DesktopCapacityFilter
from tests.fixtures.placement import both_ways, host


def test_capacity_counts_slots_vcpus_and_ram_with_overcommit():
    hosts = [
        host("room"),
        host("slots-full", desktops=10),
        # 2 CPUs × ratio 4 = 8 vCPUs; 7 used + 2 asked > 8
        host("cpu-full", vcpus=2, cpu_ratio=4.0, vcpus_used=7),
        host("cpu-room", vcpus=2, cpu_ratio=4.0, vcpus_used=6),
        # 2048 MiB × 1.5 = 3072; 2500 used + 1024 asked > 3072
        host("ram-full", memory_mib=2048, ram_ratio=1.5, memory_used_mib=2500),
        host("ram-exact", memory_mib=2048, ram_ratio=1.5, memory_used_mib=2048),
    ]
    assert both_ways(DesktopCapacityFilter(), hosts) == ["room", "cpu-room", "ram-exact"]


def test_a_host_of_unknown_size_is_limited_by_max_desktops_only():
    hosts = [
        host("unknown-busy", max_desktops=3, desktops=2, vcpus_used=500, memory_used_mib=10**6),
        host("unknown-full", max_desktops=3, desktops=3),
    ]
    assert both_ways(DesktopCapacityFilter(), hosts) == ["unknown-busy"]
