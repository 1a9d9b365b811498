import numpy as np

from broker.placement.base import HostCandidate, HostWeigher, PlacementRequest
from broker.placement.table import HostTable


class ImageCachedWeigher(HostWeigher):
    """A host that already holds the pool's image version weighs more.

    A weigher, not a filter: the libvirt provider uploads a missing base image on first use, so a
    host without it can still take the desktop; it only starts more slowly the first time.
    """

    name = "image_cached"

    def weigh(self, host: HostCandidate, request: PlacementRequest) -> float:
        return 1.0 if request.image and request.image in host.images else 0.0

    def weigh_array(self, table: HostTable, request: PlacementRequest) -> np.ndarray:
        image = request.image
        if not image:
            return np.zeros(len(table))
        return table.mask(("image", image), lambda host: image in host.images).astype(np.float64)
