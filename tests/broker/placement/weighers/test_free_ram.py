"""The free_ram weigher: free memory after overcommit."""

from broker.placement.weighers.free_ram import FreeRamWeigher
from tests.fixtures.placement import host, raw


def test_free_ram_weighs_free_memory_after_overcommit():
    hosts = [host("a", memory_mib=1000, ram_ratio=2.0, memory_used_mib=500), host("unknown")]
    assert raw(FreeRamWeigher(), hosts) == [1500.0, 0.0]
