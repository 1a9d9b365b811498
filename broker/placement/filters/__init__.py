"""Host filters, one per module, selected by name in `[placement] filters`."""

from broker.placement.filters.anti_affinity import PoolAntiAffinityFilter
from broker.placement.filters.capacity import DesktopCapacityFilter
from broker.placement.filters.desktop_kind import DesktopKindFilter
from broker.placement.filters.host_state import HostStateFilter
from broker.placement.filters.labels import LabelAffinityFilter
from broker.placement.filters.network_zone import NetworkZoneFilter

FILTERS = {
    cls.name: cls
    for cls in (
        HostStateFilter,
        DesktopKindFilter,
        LabelAffinityFilter,
        NetworkZoneFilter,
        PoolAntiAffinityFilter,
        DesktopCapacityFilter,
    )
}
