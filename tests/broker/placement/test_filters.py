"""Each filter answers one question; each weigher returns one raw number (one test group per module)."""

from broker.placement.base import HostCandidate, PlacementRequest
from broker.placement.filters.anti_affinity import PoolAntiAffinityFilter
from broker.placement.filters.capacity import DesktopCapacityFilter
from broker.placement.filters.host_state import HostStateFilter
from broker.placement.filters.labels import LabelAffinityFilter
from broker.placement.table import HostTable
from broker.placement.weighers.cpu_load import CpuLoadWeigher
from broker.placement.weighers.desktop_count import DesktopCountWeigher
from broker.placement.weighers.free_ram import FreeRamWeigher
from broker.placement.weighers.free_slots import FreeSlotsWeigher
from broker.placement.weighers.image_cached import ImageCachedWeigher

REQUEST = PlacementRequest(pool="p", vcpus=2, memory_mib=1024, image="demo:v1")


def host(name="h", **fields):
    base = {"state": "up", "max_desktops": 10, "desktops": 0, "generation": 0}
    base.update(fields)
    return HostCandidate(name, **base)


def both_ways(host_filter, hosts, request=REQUEST):
    """mask (what the engine runs, over arrays) must agree with host_passes (the one question)."""
    kept = [h for h, passes in zip(hosts, host_filter.mask(HostTable(hosts), request), strict=True) if passes]
    assert kept == [h for h in hosts if host_filter.host_passes(h, request)]
    return [h.name for h in kept]


def test_host_state_needs_up_and_enabled():
    hosts = [
        host("ok"),
        host("down", state="down"),
        host("draining", admin_state="draining"),
        host("disabled", admin_state="disabled"),
    ]
    assert both_ways(HostStateFilter(), hosts) == ["ok"]


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


def test_labels_match_zone_site_and_required_labels():
    request = PlacementRequest(pool="p", zone="business", site="sejong", required_labels=(("gpu", "true"),))
    hosts = [
        host("match", labels={"zone": "business", "site": "sejong", "gpu": "true"}),
        host("other-zone", labels={"zone": "internet", "site": "sejong", "gpu": "true"}),
        host("no-gpu", labels={"zone": "business", "site": "sejong"}),
        host("unlabelled"),
    ]
    assert both_ways(LabelAffinityFilter(), hosts, request) == ["match"]
    assert not LabelAffinityFilter().applies(REQUEST)


def test_anti_affinity_caps_desktops_of_one_pool_per_host():
    request = PlacementRequest(pool="p", max_per_host=2)
    hosts = [host("two", pool_desktops={"p": 2}), host("one", pool_desktops={"p": 1, "q": 5})]
    assert both_ways(PoolAntiAffinityFilter(), hosts, request) == ["one"]
    assert not PoolAntiAffinityFilter().applies(REQUEST)


def raw(weigher, hosts):
    values = weigher.weigh_array(HostTable(hosts), REQUEST).tolist()
    assert values == [weigher.weigh(h, REQUEST) for h in hosts]
    return values


def test_free_ram_weighs_free_memory_after_overcommit():
    hosts = [host("a", memory_mib=1000, ram_ratio=2.0, memory_used_mib=500), host("unknown")]
    assert raw(FreeRamWeigher(), hosts) == [1500.0, 0.0]


def test_cpu_load_prefers_idle_hosts_and_counts_unreported_as_zero():
    assert raw(CpuLoadWeigher(), [host("busy", cpu_load=0.9), host("new")]) == [-0.9, 0.0]


def test_desktop_count_prefers_fewer_desktops():
    assert raw(DesktopCountWeigher(), [host("a", desktops=3), host("b", desktops=1)]) == [-3.0, -1.0]


def test_image_cached_prefers_hosts_holding_the_image_version():
    hosts = [host("has", images=frozenset({"demo:v1"})), host("old", images=frozenset({"demo:v0"}))]
    assert raw(ImageCachedWeigher(), hosts) == [1.0, 0.0]


def test_free_slots_weighs_room_left():
    hosts = [host("a", max_desktops=10, desktops=4), host("over", max_desktops=2, desktops=3)]
    assert raw(FreeSlotsWeigher(), hosts) == [6.0, 0.0]


def test_table_keeps_cached_answers_current_when_a_host_changes():
    """Labels, images and per-pool counts are cached per request; a changed host updates them."""
    table = HostTable([host("a", labels={"zone": "business"}), host("b", pool_desktops={"p": 1})])
    zoned = PlacementRequest(pool="p", zone="business", max_per_host=1, image="demo:v1")
    assert LabelAffinityFilter().mask(table, zoned).tolist() == [True, False]
    assert PoolAntiAffinityFilter().mask(table, zoned).tolist() == [True, False]
    assert ImageCachedWeigher().weigh_array(table, zoned).tolist() == [0.0, 0.0]

    table.put(host("a", labels={"zone": "internet"}, pool_desktops={"p": 1}, images=frozenset({"demo:v1"})))
    table.put(host("b", labels={"zone": "business"}))

    assert LabelAffinityFilter().mask(table, zoned).tolist() == [False, True]
    assert PoolAntiAffinityFilter().mask(table, zoned).tolist() == [False, True]
    assert ImageCachedWeigher().weigh_array(table, zoned).tolist() == [1.0, 0.0]
