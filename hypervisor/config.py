"""Settings of one hypervisor host as seen by its driver."""

from pydantic import BaseModel, ConfigDict, Field


class HostSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="short unique name of the host")
    uri: str = Field(
        "qemu:///system", description="libvirt URI (qemu:///system, qemu+ssh://..., qemu+tls://...)"
    )
    storage_pool: str = Field(
        "smartwork", description="libvirt storage pool holding base images and overlays"
    )
    storage_path: str = Field(
        "/var/lib/smartwork-vdi/pool", description="directory of the pool if we create it"
    )
    max_desktops: int = Field(20, ge=0, description="most desktops placement puts on this host")
    labels: dict[str, str] = Field(
        default_factory=dict, description="placement labels (site, zone, gpu, ...); seeds the host inventory"
    )
    vcpus: int | None = Field(
        None, ge=1, description="physical CPUs placement counts (unset: only max_desktops limits)"
    )
    memory_mib: int | None = Field(
        None, ge=1, description="physical memory placement counts (unset: only max_desktops limits)"
    )
    cpu_ratio: float = Field(4.0, gt=0, description="vCPU overcommit: vCPUs placed per physical CPU")
    ram_ratio: float = Field(1.0, gt=0, description="RAM overcommit: memory placed per physical MiB")
    vnc_listen: str = Field("127.0.0.1", description="address desktops' VNC servers listen on, on the host")
