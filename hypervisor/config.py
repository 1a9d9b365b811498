"""Settings of one host as seen by its desktop provider, and how the gateway reaches its displays."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hypervisor.registry import DEFAULT_PROVIDER, check_provider_name, provider_class

# libvirt's SSH transports (https://libvirt.org/uri.html#transport-configuration), and session hosts' ssh://.
SSH_URI_SCHEMES = ("qemu+ssh", "qemu+libssh", "qemu+libssh2", "ssh")
DEFAULT_SSH_USER = "root"
DEFAULT_SSH_PORT = 22
_SSH_ADDRESS = re.compile(
    r"^(?:(?P<user>[A-Za-z_][A-Za-z0-9._-]{0,31})@)?"
    r"(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])"
    r"(?::(?P<port>[0-9]{1,5}))?$"
)


@dataclass(frozen=True)
class SshAddress:
    """Where the gateway logs in to reach a host's loopback VNC: user, host and port of its sshd."""

    user: str
    host: str  # an IPv6 address without brackets
    port: int

    @classmethod
    def parse(cls, text: str) -> SshAddress:
        """`[user@]host[:port]`, user root and port 22 when left out; ValueError says what is wrong."""
        match = _SSH_ADDRESS.match(text.strip())
        if match is None:
            raise ValueError("expected user@host:port (user and port may be left out)")
        port = int(match["port"] or DEFAULT_SSH_PORT)
        if not 1 <= port <= 65535:
            raise ValueError("the port must be between 1 and 65535")
        return cls(match["user"] or DEFAULT_SSH_USER, match["host"].strip("[]"), port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"


def ssh_address_from_uri(uri: str) -> SshAddress | None:
    """The sshd a qemu+ssh:// URI logs in to (user root, port 22 unless named), or None for other URIs."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in SSH_URI_SCHEMES or not parts.hostname:
        return None
    return SshAddress(parts.username or DEFAULT_SSH_USER, parts.hostname, port or DEFAULT_SSH_PORT)


def resolve_console_route(
    uri: str, console_access: str | None, ssh_address: str | None
) -> tuple[str, str | None]:
    """(console_access, ssh_address) with defaults filled in from the URI.

    Unset access is "ssh" for qemu+ssh:// URIs, "direct" otherwise; an unset address comes from the
    URI. ValueError (its text starts with the field name) when "ssh" has no address to go to.
    """
    derived = ssh_address_from_uri(uri)
    address = str(SshAddress.parse(ssh_address)) if ssh_address else (str(derived) if derived else None)
    access = console_access or ("ssh" if derived else "direct")
    if access == "ssh" and address is None:
        raise ValueError(
            "ssh_address: required for console_access ssh when the uri names no SSH host (user@host:port)"
        )
    return access, address


def is_loopback(address: str | None) -> bool:
    """True for loopback addresses and names (127.0.0.0/8, ::1, localhost): reachable only on that machine."""
    if not address:
        return False
    name = address.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_local_uri(uri: str) -> bool:
    """True when the URI names this machine (no host, or a loopback one): qemu:///system, test:///default."""
    try:
        hostname = urlsplit(uri).hostname
    except ValueError:
        return False
    return not hostname or is_loopback(hostname)


def check_direct_display(uri: str, console_access: str, vnc_listen: str) -> None:
    """ValueError (naming console_access) when the gateway would have to dial a remote host's loopback.

    A direct route connects to the display address the host reports. For a remote host a loopback address
    would be the gateway's own loopback: whatever listens there (another desktop of a local hypervisor)
    would answer instead of this host's desktop.
    """
    if console_access == "direct" and is_loopback(vnc_listen) and not is_local_uri(uri):
        raise ValueError(
            f"console_access: direct needs displays on an address the gateway can reach, and vnc_listen "
            f"{vnc_listen} is the host's loopback; use console_access ssh, or a vnc_listen the gateway reaches"
        )


class HostSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="short unique name of the host")
    provider: str = Field(
        DEFAULT_PROVIDER,
        description="desktop provider that drives the host (hypervisor/registry.py): libvirt (VMs) or "
        "session-host (SBC: one Xvnc per user session over SSH, docs/session-hosts.md)",
    )
    uri: str = Field(
        "qemu:///system",
        description="where the provider reaches the host; libvirt: qemu:///system, qemu+ssh://..., qemu+tls://...; "
        "session-host: ssh://[user@]host[:port]",
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
    console_access: Literal["direct", "ssh"] | None = Field(
        None,
        description="how the gateway reaches desktop displays: direct (TCP to the VNC address) or ssh "
        "(a channel through the host's sshd to its loopback VNC); unset: ssh for qemu+ssh:// URIs, else direct",
    )
    ssh_address: str | None = Field(
        None,
        max_length=255,
        description="user@host:port of the host's sshd for console_access ssh "
        "(unset: from a qemu+ssh:// uri, user root, port 22)",
    )

    @field_validator("provider")
    @classmethod
    def _registered_provider(cls, value: str) -> str:
        return check_provider_name(value)

    @field_validator("ssh_address")
    @classmethod
    def _normal_ssh_address(cls, value: str | None) -> str | None:
        return None if value is None else str(SshAddress.parse(value))

    @model_validator(mode="after")
    def _provider_uri(self) -> HostSettings:
        # The provider decides what its hosts' URIs may say (libvirt: an allow-list of parameters).
        try:
            provider_class(self.provider).check_uri(self.uri)
        except ValueError as exc:
            raise ValueError(f"uri: {exc}") from None
        return self

    @model_validator(mode="after")
    def _console_route_defaults(self) -> HostSettings:
        self.console_access, self.ssh_address = resolve_console_route(
            self.uri, self.console_access, self.ssh_address
        )
        return self
