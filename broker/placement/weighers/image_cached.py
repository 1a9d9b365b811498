from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest


class ImageCachedWeigher(HostWeigher):
    """A host that already holds the pool's image version weighs more.

    A weigher, not a filter: the libvirt driver uploads a missing base image on first use, so a
    host without it can still take the desktop; it only starts more slowly the first time.
    """

    name = "image_cached"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return 1.0 if request.image and request.image in host.images else 0.0

    def weigh_all(self, hosts: list[HostCandidate], request: PlacementRequest) -> list[float]:
        image = request.image
        if not image:
            return [0.0] * len(hosts)
        return [1.0 if image in host.images else 0.0 for host in hosts]
