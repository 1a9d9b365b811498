"""The driver contract: what the broker asks of a hypervisor host.

Drivers are blocking (libvirt-python, paramiko); the broker calls them in an executor.
A driver never touches the database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from hypervisor.config import HostSettings


class HypervisorError(Exception):
    """A host could not do what was asked. `str(exc)` is safe to show: it names the host, never a secret."""

    def __init__(self, host: str, message: str) -> None:
        super().__init__(f"host {host}: {message}")
        self.host = host
        self.message = message


class HostUnreachable(HypervisorError):
    """The host's hypervisor cannot be reached at all."""


class DesktopNotFound(HypervisorError):
    """No such desktop on the host."""


@dataclass(frozen=True)
class BootImage:
    """A golden image version as files on the broker's machine.

    `disk` is the qcow2 base every desktop's overlay is backed by; `kernel` and `initrd`
    are booted directly when present (the demo image has no boot loader).
    """

    name: str
    version: str
    disk: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""


@dataclass(frozen=True)
class DesktopSpec:
    domain_name: str
    image: BootImage
    memory_mib: int = 256
    vcpus: int = 1
    label: str = ""  # shown on the desktop's own screen, e.g. pool and user


@dataclass(frozen=True)
class HostStats:
    """A host's health as the monitor sees it: answering at all is the main signal."""

    free_memory_mib: int
    cpu_load: float | None  # 0..1 per core, from the host's CPU time counters; None on the first sample
    running_desktops: int


@dataclass(frozen=True)
class DisplayEndpoint:
    """Where the desktop's VNC server listens, as seen from the host."""

    host: str
    port: int


class Driver(ABC):
    def __init__(self, host: HostSettings) -> None:
        self.host = host

    @abstractmethod
    def create_desktop(self, spec: DesktopSpec) -> DisplayEndpoint:
        """Clone, define and start a desktop; on any failure leave no domain or volume behind."""

    @abstractmethod
    def destroy_desktop(self, domain_name: str) -> None:
        """Stop, undefine and delete the desktop's overlay. Idempotent."""

    @abstractmethod
    def desktop_state(self, domain_name: str) -> str:
        """One of "running", "paused", "shutoff", "missing"."""

    @abstractmethod
    def display(self, domain_name: str) -> DisplayEndpoint:
        """The running desktop's VNC endpoint, read from its live definition."""

    @abstractmethod
    def list_desktops(self) -> list[str]:
        """Names of the domains on this host that smartwork-vdi created."""

    def host_stats(self) -> HostStats:
        """Free memory, CPU load and running desktops; raises HostUnreachable when the host does not answer.

        Optional: drivers without a cheaper probe answer with list_desktops(), which proves the host is alive.
        """
        return HostStats(free_memory_mib=0, cpu_load=None, running_desktops=len(self.list_desktops()))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
