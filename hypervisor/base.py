"""What desktop providers and the broker exchange: errors, images, specs, endpoints, stats and events.

The contract itself is hypervisor/provider.py. A desktop's `domain_name` is its unique name on its host
(a libvirt domain, or a session on a session host).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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


class Unsupported(HypervisorError):
    """The host's provider has no such operation (e.g. suspending a desktop that is not a VM)."""


class UnknownProvider(HypervisorError):
    """The host names a provider nobody registered (hypervisor/registry.py)."""


class ImageChecksumMismatch(HypervisorError):
    """The host's copy of an image does not hold the bytes the catalog recorded; the copy was removed."""


@dataclass(frozen=True)
class BootImage:
    """A golden image version as files on the broker's machine, for providers that need one (`needs_image`).

    For libvirt, `disk` is the qcow2 base every desktop's overlay is backed by; `kernel` and `initrd`
    are booted directly when present (the demo image has no boot loader).
    """

    name: str
    version: str
    disk: Path
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    # The catalog's SHA-256 of `disk`: when set, a provider verifies the uploaded copy on the host against it.
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
    image: BootImage | None = None  # None for providers without images (session hosts)
    memory_mib: int = 256
    vcpus: int = 1
    label: str = ""  # shown on the desktop's own screen, e.g. pool and user
    # The display's VNC password (RFC 6143 section 7.2.2); None: a display without authentication.
    vnc_password: str | None = field(default=None, repr=False)
    # Session hosts (SBC): whose account the session runs as, "session" (a desktop) or "app" (one published
    # application; the session ends with it), the program, the window manager, and the session's limits.
    user: str = ""
    kind: str = "session"
    command: tuple[str, ...] = ()
    window_manager: tuple[str, ...] = ()
    cpu_limit: float | None = None  # CPUs
    memory_limit_mib: int | None = None

    def __repr__(self) -> str:
        # The VNC password must not reach a log line or traceback that prints the spec.
        return f"DesktopSpec(domain_name={self.domain_name!r}, user={self.user!r}, kind={self.kind!r}, ...)"


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


@dataclass(frozen=True)
class Readiness:
    """Whether a running desktop finished starting, as far as its provider can tell.

    `crashed` holds what the desktop showed when it died while starting (e.g. "Kernel panic - …"),
    `waiting_for` what is still missing, `last_output` the last line it showed; all three are for messages.
    """

    ready: bool
    crashed: str = ""
    waiting_for: str = ""
    last_output: str = ""
