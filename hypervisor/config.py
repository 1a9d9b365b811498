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
    vnc_listen: str = Field("127.0.0.1", description="address desktops' VNC servers listen on, on the host")
