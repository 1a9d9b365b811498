"""The desktop provider contract: everything the broker asks of a host, and `provider_for` to get one.

A provider runs desktops on one host: libvirt VMs, or (next) one Xvnc per user on a session host over
SSH. Providers are blocking (libvirt-python, paramiko); the broker calls them in an executor. A provider
never touches the database.

Five operations every provider has; the rest are optional and answer "not supported" in a way the broker
needs no special case for: power actions and images raise `Unsupported` (a HypervisorError, so the
broker reports it like any host error), `needs_image` says whether desktops boot from an uploaded image,
`readiness` answers "ready" when the provider cannot tell more than "running", and `watch_events`
answers False when the host sends no events (the monitor's polling notices changes, only later).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

from hypervisor.base import (
    BootImage,
    DesktopSpec,
    DisplayEndpoint,
    DomainEvent,
    HostStats,
    Readiness,
    UnknownProvider,
    Unsupported,
)
from hypervisor.config import HostSettings
from hypervisor.registry import provider_class

_ANY_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


class DesktopProvider(ABC):
    """Runs desktops on one host (`self.host`); registered by name in hypervisor/registry.py."""

    # Whether desktops start from a golden image uploaded to the host (upload_image, image_sha256).
    needs_image: ClassVar[bool] = True
    # Whether its desktops are users' sessions on a shared host (pool kinds session and app) rather than
    # machines of their own (dedicated, floating); placement keeps each kind of pool to its kind of host.
    runs_sessions: ClassVar[bool] = False

    def __init__(self, host: HostSettings) -> None:
        self.host = host

    @classmethod
    def check_uri(cls, uri: str) -> None:
        """ValueError saying what a host URI of this provider looks like, if `uri` is not one."""
        if not _ANY_URI.match(uri):
            raise ValueError("expected scheme://…")

    @classmethod
    def check_added_uri(cls, uri: str) -> None:
        """ValueError when a URI is not one an administrator may add through the admin API or `vdi host add`.

        The configuration file is written by whoever runs the broker and may say more (the lab's hosts name
        an SSH wrapper); an API call must not make the broker run a program or skip a host-key check.
        """
        cls.check_uri(uri)

    # -- every provider ----------------------------------------------------------------------------

    @abstractmethod
    def create_desktop(self, spec: DesktopSpec) -> DisplayEndpoint:
        """Create and start a desktop; on any failure leave nothing of it behind."""

    @abstractmethod
    def destroy_desktop(self, domain_name: str) -> None:
        """Stop the desktop and delete everything it had on the host. Idempotent."""

    @abstractmethod
    def desktop_state(self, domain_name: str) -> str:
        """One of "running", "paused", "suspended" (memory saved to disk), "shutoff", "missing"."""

    @abstractmethod
    def display(self, domain_name: str) -> DisplayEndpoint:
        """The running desktop's VNC endpoint."""

    @abstractmethod
    def list_desktops(self) -> list[str]:
        """Names of the desktops on this host that smartwork-vdi created."""

    def ended_desktops(self) -> list[str]:
        """Names of desktops that ended by themselves but are still on the host (an SBC session whose
        program exited: the user logged out); empty for providers whose desktops do not end that way."""
        return []

    # -- the host ----------------------------------------------------------------------------------

    def probe(self) -> str:
        """Reach the host and say in a few words what it offers (logged when a host is added);
        HypervisorError (HostUnreachable) when it cannot be reached."""
        self.list_desktops()
        return "reachable"

    def host_stats(self) -> HostStats:
        """Free memory, CPU load and running desktops; raises HostUnreachable when the host does not answer.

        Without a cheaper probe, list_desktops() proves the host is alive.
        """
        return HostStats(free_memory_mib=0, cpu_load=None, running_desktops=len(self.list_desktops()))

    def watch_events(self, callback: Callable[[DomainEvent], None]) -> bool:
        """Call `callback` (from a provider thread) for every lifecycle event of this host's desktops;
        False when the host sends none."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- readiness ---------------------------------------------------------------------------------

    def readiness(self, domain_name: str) -> Readiness:
        """Whether a running desktop finished starting (e.g. a marker on a VM's serial console).

        Without a way to look inside, a running desktop counts as ready.
        """
        return Readiness(ready=True)

    # -- power actions on a kept (dedicated) desktop -------------------------------------------------

    def stop_desktop(self, domain_name: str, timeout_s: float) -> None:
        """Shut the desktop down (forced off after `timeout_s`), keeping its disk. Idempotent."""
        raise self._unsupported(f"stop desktop {domain_name}")

    def suspend_desktop(self, domain_name: str) -> None:
        """Save the desktop's memory to disk and free it on the host; start_desktop resumes it."""
        raise self._unsupported(f"suspend desktop {domain_name}")

    def start_desktop(self, domain_name: str) -> DisplayEndpoint:
        """Start (or resume) a stopped or suspended desktop from its kept disk; its display endpoint."""
        raise self._unsupported(f"start desktop {domain_name}")

    # -- golden images (providers with `needs_image`) ------------------------------------------------

    def upload_image(self, image: BootImage) -> bool:
        """Copy the image's files to the host if not there yet (True when copied now); with
        `image.sha256`, a new copy is verified on the host and removed again when it differs."""
        raise self._unsupported(f"upload image {image.name} {image.version}")

    def image_sha256(self, image: BootImage) -> str:
        """SHA-256 of the host's copy of the image's disk, read back from the host."""
        raise self._unsupported(f"read image {image.name} {image.version}")

    def _unsupported(self, action: str) -> Unsupported:
        return Unsupported(self.host.name, f"the {self.host.provider} provider cannot {action}")


def provider_for(host: HostSettings) -> DesktopProvider:
    """The provider the host's settings name (`provider`), built for it; nothing is connected yet."""
    try:
        cls = provider_class(host.provider)
    except ValueError as exc:
        raise UnknownProvider(host.name, f"provider: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, DesktopProvider)):
        raise UnknownProvider(host.name, f"provider: {host.provider!r} is not a DesktopProvider")
    return cls(host)
