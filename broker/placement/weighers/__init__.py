"""Host weighers, one per module, selected by name with a multiplier in `[placement.weighers]`."""

from broker.placement.weighers.cpu_load import CpuLoadWeigher
from broker.placement.weighers.desktop_count import DesktopCountWeigher
from broker.placement.weighers.free_ram import FreeRamWeigher
from broker.placement.weighers.free_slots import FreeSlotsWeigher
from broker.placement.weighers.image_cached import ImageCachedWeigher

WEIGHERS = {
    cls.name: cls
    for cls in (FreeRamWeigher, CpuLoadWeigher, DesktopCountWeigher, FreeSlotsWeigher, ImageCachedWeigher)
}
