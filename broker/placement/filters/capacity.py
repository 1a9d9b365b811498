from broker.placement.base import HostCandidate, HostFilter, PlacementRequest


class DesktopCapacityFilter(HostFilter):
    """Room for one more desktop: `max_desktops`, and vCPU and RAM within physical × overcommit ratio.

    A host whose physical size is unknown (no override, not reported) is limited by `max_desktops` only.
    """

    name = "capacity"
    reason = "full"

    def host_passes(self, host: HostCandidate, request: PlacementRequest) -> bool:
        return host.fits(request.vcpus, request.memory_mib)

    def filter_all(self, hosts: list[HostCandidate], request: PlacementRequest) -> list[HostCandidate]:
        # host.fits inlined: this runs for every host in every decision.
        vcpus, memory = request.vcpus, request.memory_mib
        return [
            h
            for h in hosts
            if h.desktops < h.max_desktops
            and (h.vcpu_limit is None or h.vcpus_used + vcpus <= h.vcpu_limit)
            and (h.memory_limit_mib is None or h.memory_used_mib + memory <= h.memory_limit_mib)
        ]
