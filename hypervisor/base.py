"""The driver contract: what the broker asks of a hypervisor host.

Drivers are blocking (libvirt-python, paramiko); the broker calls them in an executor.
A driver never touches the database.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
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


class ImageChecksumMismatch(HypervisorError):
    """The host's copy of an image does not hold the bytes the catalog recorded; the copy was removed."""


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
    # The catalog's SHA-256 of `disk`: when set, a driver verifies the uploaded copy on the host against it.
    sha256: str | None = None

    @classmethod
    def of(cls, files) -> BootImage:
        """The boot image of anything that names an image's files by these attributes (images.demo.DemoImage)."""
        return cls(
            name=files.name,
            version=files.version,
            disk=files.disk,
            kernel=files.kernel,
            initrd=files.initrd,
            cmdline=files.cmdline,
        )


@dataclass(frozen=True)
class DesktopSpec:
    domain_name: str
    image: BootImage
    memory_mib: int = 256
    vcpus: int = 1
    label: str = ""  # shown on the desktop's own screen, e.g. pool and user
    # The display's VNC password (RFC 6143 section 7.2.2); None: a display without authentication.
    vnc_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HostStats:
    """A host's health as the monitor sees it: answering at all is the main signal."""

    free_memory_mib: int
    cpu_load: float | None  # 0..1 per core, from the host's CPU time counters; None on the first sample
    running_desktops: int
    # The host's physical size, for placement when the inventory has no override (None: not known).
    cpus: int | None = None
    memory_mib: int | None = None


@dataclass(frozen=True)
class DisplayEndpoint:
    """Where the desktop's VNC server listens, as seen from the host."""

    host: str
    port: int


@dataclass(frozen=True)
class DomainEvent:
    """A lifecycle change of one domain, as the host reported it (libvirt's lifecycle events).

    `event` is "started", "suspended", "resumed", "stopped", "shutdown", "crashed", "defined",
    "undefined" or "pmsuspended"; `detail` says how, e.g. "destroyed", "crashed", "failed", "shutdown".
    """

    host: str
    domain_name: str
    event: str
    detail: str

    @property
    def crashed(self) -> bool:
        """The guest died on its own (QEMU crashed or was killed), not by anyone's request."""
        return self.event == "crashed" or (self.event == "stopped" and self.detail in ("crashed", "failed"))


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
        """One of "running", "paused", "suspended" (memory saved to disk), "shutoff", "missing"."""

    @abstractmethod
    def display(self, domain_name: str) -> DisplayEndpoint:
        """The running desktop's VNC endpoint, read from its live definition."""

    @abstractmethod
    def list_desktops(self) -> list[str]:
        """Names of the domains on this host that smartwork-vdi created."""

    # Power actions on a kept (dedicated) desktop; optional: drivers without them refuse with an error.

    def stop_desktop(self, domain_name: str, timeout_s: float) -> None:
        """Shut the guest down (forced off after `timeout_s`), keeping its definition and disk. Idempotent."""
        raise HypervisorError(self.host.name, f"this driver cannot stop desktop {domain_name}")

    def suspend_desktop(self, domain_name: str) -> None:
        """Save the guest's memory to disk and free it on the host; start_desktop resumes it."""
        raise HypervisorError(self.host.name, f"this driver cannot suspend desktop {domain_name}")

    def start_desktop(self, domain_name: str) -> DisplayEndpoint:
        """Start (or resume) a stopped or suspended desktop from its kept disk; its display endpoint."""
        raise HypervisorError(self.host.name, f"this driver cannot start desktop {domain_name}")

    # Golden images on the host; optional: drivers that need no image copy refuse with an error.

    def upload_image(self, image: BootImage) -> bool:
        """Copy the image's files to the host if not there yet (True when copied now); with
        `image.sha256`, a new copy is verified on the host and removed again when it differs."""
        raise HypervisorError(self.host.name, f"this driver cannot upload image {image.name} {image.version}")

    def image_sha256(self, image: BootImage) -> str:
        """SHA-256 of the host's copy of the image's disk, read back from the host."""
        raise HypervisorError(self.host.name, f"this driver cannot read image {image.name} {image.version}")

    def host_stats(self) -> HostStats:
        """Free memory, CPU load and running desktops; raises HostUnreachable when the host does not answer.

        Optional: drivers without a cheaper probe answer with list_desktops(), which proves the host is alive.
        """
        return HostStats(free_memory_mib=0, cpu_load=None, running_desktops=len(self.list_desktops()))

    def watch_events(self, callback: Callable[[DomainEvent], None]) -> bool:
        """Call `callback` (from a driver thread) for every lifecycle event of this host's domains.

        Optional: returns False when the driver has no events; the monitor's polling still notices
        changes, only later.
        """
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
