"""The libvirt provider: desktops as QEMU domains on a libvirtd host (local, or qemu+ssh/qemu+tls remote).

Everything goes through the libvirt API, including the image files: base images are uploaded into a
storage pool as volumes and each desktop gets a qcow2 overlay volume backed by them, so the broker never
needs a shell or a shared filesystem on the host.

Calls block; the broker runs them in an executor. One connection per provider, opened on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import struct
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import libvirt

import hypervisor.domain_xml as domain_xml
from hypervisor.base import (
    BootImage,
    DesktopNotFound,
    DesktopSpec,
    DisplayEndpoint,
    DomainEvent,
    HostStats,
    HostUnreachable,
    HypervisorError,
    ImageChecksumMismatch,
    Readiness,
)
from hypervisor.config import HostSettings
from hypervisor.provider import DesktopProvider
from monitoring.metrics import DESKTOP_BOOT_DURATION, DESKTOP_CLONE_DURATION

log = logging.getLogger(__name__)


def _ignore_libvirt_error(_ctx: object, _error: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised as exceptions instead."""


libvirt.registerErrorHandler(_ignore_libvirt_error, None)

# libvirt URIs (https://libvirt.org/uri.html): qemu with its transports, and the test driver that stands in
# for hosts in placement runs at scale.
URI_PATTERN = re.compile(r"^(qemu(\+(ssh|tls|tcp|unix|libssh|libssh2))?|test)://")
# What the desktop image prints on its serial console when the desktop can be used (images/demo_init.sh;
# a getty's login prompt for full images), and what a kernel prints when it dies while booting.
READY_MARKER = re.compile(r"smartwork-vdi: desktop ready|^\S+ login:", re.MULTILINE)
PANIC_MARKER = re.compile(r"Kernel panic[^\r\n]*")
CONTROL = re.compile(r"[\x00-\x1f\x7f]|\x1b\[[0-9;]*[A-Za-z]")
# Domain and volume names become file names on the host: keep them to a safe alphabet.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
VNC_PORT_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
SHUTDOWN_POLL_S = 0.5
SHUTDOWN_REPRESS_S = 2.0
UPLOAD_CHUNK = 1 << 20
CONSOLE_LOG_SUFFIX = ".console.log"
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
)
STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}

# Keepalive: a host that stops answering (network cut, hung libvirtd) closes the connection after about
# KEEPALIVE_INTERVAL_S * (KEEPALIVE_COUNT + 1) seconds instead of hanging calls for the TCP timeout.
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "end of file",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
}

# Lifecycle events (virDomainEventType) and the details the monitor cares about (virDomainEvent*DetailType).
LIFECYCLE_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
LIFECYCLE_DETAILS = {
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN): "shutdown",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): "destroyed",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED): "crashed",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): "migrated",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED): "saved",
    (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED): "failed",
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_BOOTED): "booted",
    (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_STARTED_RESTORED): "restored",
    (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED): "paused",
    (libvirt.VIR_DOMAIN_EVENT_CRASHED, libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED): "panicked",
}

# libvirt runs keepalives and close callbacks only with an event loop; one per process, in its own thread.
_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


# Several providers (threads of one broker) may start desktops of a new image on one host at once; the base
# volumes must be uploaded once. Keyed by (uri, pool, volume).
_upload_locks: dict[tuple[str, str, str], threading.Lock] = {}
_upload_locks_guard = threading.Lock()


def _upload_lock(key: tuple[str, str, str]) -> threading.Lock:
    with _upload_locks_guard:
        return _upload_locks.setdefault(key, threading.Lock())


def safe_uri(uri: str) -> str:
    """The URI without credentials or query (which may name key files) for messages and logs."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def _error_text(exc: libvirt.libvirtError) -> str:
    return (exc.get_error_message() or str(exc)).strip()


def _error_code(exc: libvirt.libvirtError) -> int:
    return exc.get_error_code() or 0


def qcow2_virtual_size(path: Path) -> int:
    """The disk size a qcow2 file presents to guests (header bytes 24-31), without needing qemu-img."""
    with path.open("rb") as stream:
        header = stream.read(32)
    if len(header) < 32 or header[:4] != b"QFI\xfb":
        raise ValueError(f"{path} is not a qcow2 image")
    return struct.unpack(">Q", header[24:32])[0]


@dataclass(frozen=True)
class BaseVolumes:
    """Host-side paths of an image's volumes in the pool."""

    disk: str
    kernel: str | None
    initrd: str | None


def last_console_line(console: str) -> str:
    """The last non-empty line the console showed, without control characters, for messages."""
    lines = [CONTROL.sub("", line).strip() for line in console.splitlines()]
    return next((line for line in reversed(lines) if line), "")[:200]


# libvirt URI parameters (https://libvirt.org/uri.html) an administrator may set through the API or `vdi host
# add`. The others make libvirt run a program (command, netcat), skip or replace the SSH host-key check
# (no_verify, known_hosts_verify, known_hosts), or read files or sockets of the broker's machine (keyfile,
# pkipath, socket): only the configuration file may say those (security review finding 6).
ALLOWED_URI_PARAMETERS = frozenset({"mode", "proxy", "sshauth", "no_tty", "tls_priority"})


def check_uri_parameters(uri: str) -> None:
    """ValueError naming the first query parameter of `uri` that is not allowed."""
    query = urlsplit(uri).query
    for name, _value in parse_qsl(query, keep_blank_values=True):
        if name.lower() not in ALLOWED_URI_PARAMETERS:
            allowed = ", ".join(sorted(ALLOWED_URI_PARAMETERS))
            raise ValueError(f"the URI parameter {name!r} is not allowed (allowed: {allowed})")


def console_readiness(console: str) -> Readiness:
    """Ready once the serial console shows the ready marker; a kernel panic on it is a crash."""
    last = last_console_line(console)
    panic = PANIC_MARKER.search(console)
    if panic is not None:
        return Readiness(ready=False, crashed=panic.group(0).strip(), last_output=last)
    if READY_MARKER.search(console):
        return Readiness(ready=True, last_output=last)
    return Readiness(ready=False, waiting_for="the ready marker on its console", last_output=last)


class LibvirtProvider(DesktopProvider):
    @classmethod
    def check_uri(cls, uri: str) -> None:
        if not URI_PATTERN.match(uri):
            raise ValueError(
                "expected a libvirt URI: qemu:///system, qemu+ssh://host/system, test:///default"
            )

    @classmethod
    def check_added_uri(cls, uri: str) -> None:
        cls.check_uri(uri)
        check_uri_parameters(uri)

    def __init__(self, host: HostSettings) -> None:
        super().__init__(host)
        self._conn: libvirt.virConnect | None = None
        self._conn_lock = threading.Lock()
        self._virt_type: str | None = None
        self._cpu_sample: tuple[float, int, int] | None = None  # (monotonic, busy ns, total ns)
        self._closed = threading.Event()  # set by libvirt's close callback when the connection dies
        self._event_callback: Callable[[DomainEvent], None] | None = None

    # -- connection ------------------------------------------------------------------------------------

    def _connection(self) -> libvirt.virConnect:
        with self._conn_lock:
            if self._conn is not None and (self._closed.is_set() or not self._alive(self._conn)):
                self._drop_connection()
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def _open(self) -> libvirt.virConnect:
        ensure_event_loop()
        try:
            conn = libvirt.open(self.host.uri)
        except libvirt.libvirtError as exc:
            raise HostUnreachable(
                self.host.name, f"cannot reach hypervisor at {safe_uri(self.host.uri)}: {_error_text(exc)}"
            ) from None
        self._virt_type = None  # a reconnect may reach a reconfigured host
        self._watch(conn)
        log.debug("host %s: connected to %s", self.host.name, safe_uri(self.host.uri))
        return conn

    def _watch(self, conn: libvirt.virConnect) -> None:
        self._closed.clear()
        try:
            conn.registerCloseCallback(self._on_close, None)
            conn.setKeepAlive(KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT)
        except libvirt.libvirtError as exc:
            # Local and test:/// connections may not support keepalive; they cannot hang on a network.
            log.debug("host %s: no keepalive: %s", self.host.name, _error_text(exc))
        if self._event_callback is not None:
            self._register_lifecycle(conn)

    # -- lifecycle events ------------------------------------------------------------------------------

    def watch_events(self, callback: Callable[[DomainEvent], None]) -> bool:
        """Lifecycle events of this host's domains, registered on every (re)connection.

        The callback runs on libvirt's event thread and must only hand the event over (e.g. with
        loop.call_soon_threadsafe). Connecting happens on the next call that needs the host.
        """
        self._event_callback = callback
        with self._conn_lock:
            if self._conn is not None and not self._closed.is_set():
                self._register_lifecycle(self._conn)
        return True

    def _register_lifecycle(self, conn: libvirt.virConnect) -> None:
        try:
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        except libvirt.libvirtError as exc:
            log.warning("host %s: no lifecycle events: %s", self.host.name, _error_text(exc))

    def _on_lifecycle(
        self, _conn: libvirt.virConnect, domain: libvirt.virDomain, event: int, detail: int, _opaque: object
    ) -> None:
        callback = self._event_callback
        if callback is None:
            return
        kind = LIFECYCLE_EVENTS.get(event, str(event))
        how = LIFECYCLE_DETAILS.get((event, detail), str(detail))
        try:
            callback(DomainEvent(host=self.host.name, domain_name=domain.name(), event=kind, detail=how))
        except Exception:
            # An exception must not escape into libvirt's event loop thread.
            log.exception("host %s: lifecycle event handler failed", self.host.name)

    def _on_close(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        # Runs on the libvirt event thread: only flag it; the next call reconnects or reports unreachable.
        self._closed.set()
        if reason != libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
            log.warning(
                "host %s: connection to the hypervisor closed: %s",
                self.host.name,
                CLOSE_REASONS.get(reason, reason),
            )

    def is_connected(self) -> bool:
        """Whether the provider holds a live connection (False after the close callback fired)."""
        conn = self._conn
        return conn is not None and not self._closed.is_set() and self._alive(conn)

    @staticmethod
    def _alive(conn: libvirt.virConnect) -> bool:
        try:
            return conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

    def close(self) -> None:
        with self._conn_lock:
            self._drop_connection()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn libvirt errors into ours: HostUnreachable if the connection died, else HypervisorError."""
        try:
            yield
        except libvirt.libvirtError as exc:
            conn = self._conn
            if conn is None or not self._alive(conn):
                self.close()
                raise HostUnreachable(
                    self.host.name,
                    f"lost the hypervisor at {safe_uri(self.host.uri)} while trying to {action}",
                ) from None
            raise HypervisorError(self.host.name, f"cannot {action}: {_error_text(exc)}") from None

    # -- the DesktopProvider contract ------------------------------------------------------------------

    def create_desktop(self, spec: DesktopSpec) -> DisplayEndpoint:
        self._check_spec(spec)
        conn = self._connection()
        with self._errors(f"create desktop {spec.domain_name}"):
            if self._lookup_domain(conn, spec.domain_name) is not None:
                raise HypervisorError(self.host.name, f"desktop {spec.domain_name} already exists")
            pool = self._ensure_pool(conn)
            base = self._ensure_base_volumes(conn, pool, spec.image)
        return self._create_from_base(conn, pool, spec, base)

    def destroy_desktop(self, domain_name: str) -> None:
        self._check_name("domain_name", domain_name)
        conn = self._connection()
        with self._errors(f"destroy desktop {domain_name}"):
            domain = self._lookup_domain(conn, domain_name)
            if domain is not None:
                if not self._is_ours(domain):
                    raise HypervisorError(
                        self.host.name,
                        f"domain {domain_name} was not created by smartwork-vdi; not destroying it",
                    )
                self._remove_domain(domain)
            pool = self._lookup_pool(conn)
            if pool is not None:
                for volume_name in self._desktop_volume_names(domain_name):
                    self._delete_volume(pool, volume_name)
        log.info("host %s: desktop %s destroyed", self.host.name, domain_name)

    def desktop_state(self, domain_name: str) -> str:
        conn = self._connection()
        with self._errors(f"read the state of desktop {domain_name}"):
            domain = self._lookup_domain(conn, domain_name)
            if domain is None:
                return "missing"
            state, _reason = domain.state()
            if state == libvirt.VIR_DOMAIN_SHUTOFF and domain.hasManagedSaveImage(0):
                return "suspended"
        return STATES.get(state, "shutoff")

    def display(self, domain_name: str) -> DisplayEndpoint:
        conn = self._connection()
        with self._errors(f"read the display of desktop {domain_name}"):
            domain = self._lookup_domain(conn, domain_name)
            if domain is None:
                raise DesktopNotFound(self.host.name, f"no desktop {domain_name}")
            endpoint = domain_xml.vnc_endpoint(domain.XMLDesc(0)) if domain.isActive() else None
        if endpoint is None:
            raise HypervisorError(self.host.name, f"desktop {domain_name} is not running")
        return self._endpoint(*endpoint)

    def list_desktops(self) -> list[str]:
        conn = self._connection()
        with self._errors("list desktops"):
            domains = conn.listAllDomains(0)
            return sorted(domain.name() for domain in domains if self._is_ours(domain))

    # -- power actions on kept desktops -----------------------------------------------------------------
    # Domains are persistent (defineXML, then create), so a stopped or saved desktop keeps its definition,
    # overlay volume and console log, and start_desktop boots or restores the same domain.

    def stop_desktop(self, domain_name: str, timeout_s: float) -> None:
        self._check_name("domain_name", domain_name)
        conn = self._connection()
        with self._errors(f"stop desktop {domain_name}"):
            domain = self._own_domain(conn, domain_name)
            if not domain.isActive():
                return
            if not self._shut_down(domain, timeout_s):
                log.warning(
                    "host %s: desktop %s did not shut down within %.0f s; powering it off",
                    *(self.host.name, domain_name, timeout_s),
                )
                with contextlib.suppress(libvirt.libvirtError):
                    domain.destroy()  # it may have finished shutting down just now
            if domain.isActive():
                raise HypervisorError(self.host.name, f"desktop {domain_name} is still running")
        log.info("host %s: desktop %s stopped", self.host.name, domain_name)

    def suspend_desktop(self, domain_name: str) -> None:
        self._check_name("domain_name", domain_name)
        conn = self._connection()
        with self._errors(f"suspend desktop {domain_name}"):
            domain = self._own_domain(conn, domain_name)
            if domain.isActive():
                # Managed save writes the guest's memory to the host's disk and ends QEMU, so a suspended
                # desktop holds no memory; the next create() restores it where it was.
                domain.managedSave(0)
        log.info("host %s: desktop %s suspended (memory saved)", self.host.name, domain_name)

    def start_desktop(self, domain_name: str) -> DisplayEndpoint:
        self._check_name("domain_name", domain_name)
        conn = self._connection()
        with self._errors(f"start desktop {domain_name}"):
            domain = self._own_domain(conn, domain_name)
            state, _reason = domain.state()
            if state == libvirt.VIR_DOMAIN_PAUSED:
                domain.resume()
            elif state == libvirt.VIR_DOMAIN_PMSUSPENDED:
                domain.pMWakeup(0)
            elif not domain.isActive():
                domain.create()  # restores the managed save image when there is one
            try:
                endpoint = self._wait_for_vnc(domain)
            except ValueError as exc:
                raise HypervisorError(self.host.name, f"cannot start desktop {domain_name}: {exc}") from None
        log.info(
            "host %s: desktop %s started, VNC %s:%d",
            self.host.name,
            domain_name,
            endpoint.host,
            endpoint.port,
        )
        return endpoint

    def _own_domain(self, conn: libvirt.virConnect, domain_name: str) -> libvirt.virDomain:
        domain = self._lookup_domain(conn, domain_name)
        if domain is None:
            raise DesktopNotFound(self.host.name, f"no desktop {domain_name}")
        if not self._is_ours(domain):
            raise HypervisorError(
                self.host.name, f"domain {domain_name} was not created by smartwork-vdi; not touching it"
            )
        return domain

    @staticmethod
    def _shut_down(domain: libvirt.virDomain, timeout_s: float) -> bool:
        """Ask the guest to shut down (ACPI power button) and wait; True when it is off in time."""
        deadline = time.monotonic() + timeout_s
        next_press = time.monotonic()
        while time.monotonic() < deadline:
            if not domain.isActive():
                return True
            # Pressed again now and then: a guest still booting, or between two listeners, misses a press.
            if time.monotonic() >= next_press:
                with contextlib.suppress(libvirt.libvirtError):
                    domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
                next_press = time.monotonic() + SHUTDOWN_REPRESS_S
            time.sleep(SHUTDOWN_POLL_S)
        return not domain.isActive()

    # -- golden images ----------------------------------------------------------------------------------

    def upload_image(self, image: BootImage) -> bool:
        self._check_name("image.name", image.name)
        self._check_name("image.version", image.version)
        conn = self._connection()
        with self._errors(f"upload image {image.name} {image.version}"):
            pool = self._ensure_pool(conn)
            present = self._lookup_volume(pool, base_disk_volume(image))
            already = present is not None and self._physical_size(present) == Path(image.disk).stat().st_size
            self._ensure_base_volumes(conn, pool, image)
        return not already

    def image_sha256(self, image: BootImage) -> str:
        self._check_name("image.name", image.name)
        self._check_name("image.version", image.version)
        conn = self._connection()
        name = base_disk_volume(image)
        with self._errors(f"read image {image.name} {image.version}"):
            pool = self._lookup_pool(conn)
            volume = self._lookup_volume(pool, name) if pool is not None else None
            if volume is None:
                raise HypervisorError(
                    self.host.name, f"image {image.name} {image.version} is not on this host"
                )
            return self._volume_sha256(conn, volume)

    # -- readiness: the serial console -----------------------------------------------------------------

    def readiness(self, domain_name: str) -> Readiness:
        return console_readiness(self.console_log(domain_name))

    # -- beyond the contract ---------------------------------------------------------------------------

    def console_log(self, domain_name: str, max_bytes: int = 64 * 1024) -> str:
        """The tail of the desktop's serial console, read through libvirt (so it works for remote hosts)."""
        self._check_name("domain_name", domain_name)
        conn = self._connection()
        with self._errors(f"read the console log of desktop {domain_name}"):
            pool = self._lookup_pool(conn)
            volume = self._lookup_volume(pool, domain_name + CONSOLE_LOG_SUFFIX) if pool else None
            if volume is None:
                raise DesktopNotFound(self.host.name, f"no console log for desktop {domain_name}")
            return self._download_tail(conn, volume, max_bytes).decode("utf-8", errors="replace")

    def probe(self) -> str:
        """Connects and reads the host's capabilities: how desktops will run there."""
        return self.virt_type()

    def virt_type(self) -> str:
        """The domain type desktops get: "kvm" with hardware acceleration, else "qemu" (TCG)."""
        conn = self._connection()
        with self._errors("read the host's capabilities"):
            return self._virt_type_of(conn)

    def host_stats(self) -> HostStats:
        """One round of cheap calls; the monitor treats HostUnreachable as "did not answer"."""
        conn = self._connection()
        with self._errors("read the host's statistics"):
            free_mib = conn.getFreeMemory() // (1024 * 1024)
            busy, total = self._cpu_times(conn)
            running = len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
            # virNodeInfo: [model, memory MiB, active CPUs, MHz, NUMA nodes, sockets, cores, threads]. Its
            # memory is summed over NUMA cells and can miss some (seen in VMs); the node's stats hold it all.
            info = conn.getInfo()
            total_kib = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0).get("total", 0)
        return HostStats(
            free_memory_mib=free_mib,
            cpu_load=self._cpu_load(busy, total),
            running_desktops=running,
            cpus=int(info[2]),
            memory_mib=int(total_kib // 1024) or int(info[1]),
        )

    @staticmethod
    def _cpu_times(conn: libvirt.virConnect) -> tuple[int, int]:
        times = conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS, 0)
        busy = sum(times.get(key, 0) for key in ("kernel", "user"))
        return busy, busy + times.get("idle", 0) + times.get("iowait", 0)

    def _cpu_load(self, busy: int, total: int) -> float | None:
        # Counters only grow, so load is the busy share of the time elapsed since the previous sample.
        previous, self._cpu_sample = self._cpu_sample, (time.monotonic(), busy, total)
        if previous is None or total <= previous[2]:
            return None
        return min(1.0, max(0.0, (busy - previous[1]) / (total - previous[2])))

    # -- validation ------------------------------------------------------------------------------------

    def _check_name(self, field: str, value: str) -> None:
        if not NAME_PATTERN.match(value or ""):
            raise HypervisorError(
                self.host.name, f"{field} {value!r} must be 1-63 letters, digits, '.', '_' or '-'"
            )

    def _check_spec(self, spec: DesktopSpec) -> None:
        self._check_name("domain_name", spec.domain_name)
        if spec.image is None:
            raise HypervisorError(self.host.name, f"desktop {spec.domain_name}: a VM needs an image")
        self._check_name("image.name", spec.image.name)
        self._check_name("image.version", spec.image.version)
        if spec.memory_mib < 16:
            raise HypervisorError(self.host.name, f"memory_mib must be at least 16, not {spec.memory_mib}")
        if spec.vcpus < 1:
            raise HypervisorError(self.host.name, f"vcpus must be at least 1, not {spec.vcpus}")
        for field, path in (
            ("image.disk", spec.image.disk),
            ("image.kernel", spec.image.kernel),
            ("image.initrd", spec.image.initrd),
        ):
            if path is not None and not Path(path).is_file():
                raise HypervisorError(self.host.name, f"{field}: no such file {path}")

    # -- domains ---------------------------------------------------------------------------------------

    @staticmethod
    def _lookup_domain(conn: libvirt.virConnect, name: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if _error_code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    @staticmethod
    def _is_ours(domain: libvirt.virDomain) -> bool:
        try:
            domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.NAMESPACE, 0)
        except libvirt.libvirtError as exc:
            # A domain undefined while we were listing is not ours any more either.
            if _error_code(exc) in (libvirt.VIR_ERR_NO_DOMAIN_METADATA, libvirt.VIR_ERR_NO_DOMAIN):
                return False
            raise
        return True

    @staticmethod
    def _remove_domain(domain: libvirt.virDomain) -> None:
        try:
            if domain.isActive():
                domain.destroy()
            domain.undefineFlags(UNDEFINE_FLAGS)
        except libvirt.libvirtError as exc:
            # Someone else (another broker, a reconcile pass) removed it first: that is what we wanted.
            if _error_code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise

    def _virt_type_of(self, conn: libvirt.virConnect) -> str:
        if self._virt_type is None:
            self._virt_type = "kvm" if kvm_usable(conn) else "qemu"
            log.info(
                "host %s: desktops run with %s",
                self.host.name,
                "KVM" if self._virt_type == "kvm" else "TCG (no usable KVM)",
            )
        return self._virt_type

    def _create_from_base(
        self, conn: libvirt.virConnect, pool: libvirt.virStoragePool, spec: DesktopSpec, base: BaseVolumes
    ) -> DisplayEndpoint:
        """Overlay, console log, define, start; anything made here is removed again if a later step fails."""
        name = spec.domain_name
        started = time.monotonic()
        with ExitStack() as undo:
            try:
                overlay = self._create_volume(
                    pool, name + ".qcow2", qcow2_virtual_size(spec.image.disk), "qcow2", "0600", base.disk
                )
                undo.callback(self._undo, "delete overlay", lambda: overlay.delete(0))
                cloned = time.monotonic()
                console = self._create_volume(pool, name + CONSOLE_LOG_SUFFIX, 0, "raw", "0600")
                undo.callback(self._undo, "delete console log", lambda: console.delete(0))
                plan = self._plan(conn, spec, base, overlay.path(), console.path())
                domain = conn.defineXML(domain_xml.domain_xml(plan))
                undo.callback(self._undo, "remove domain", lambda: self._remove_domain(domain))
                booting = time.monotonic()
                domain.create()
                endpoint = self._wait_for_vnc(domain)
            except libvirt.libvirtError as exc:
                raise HypervisorError(
                    self.host.name, f"cannot start desktop {name}: {_error_text(exc)}"
                ) from None
            except (OSError, ValueError) as exc:
                raise HypervisorError(self.host.name, f"cannot start desktop {name}: {exc}") from None
            undo.pop_all()
        # Clone: the linked-clone overlay over the base volume; boot: QEMU started until its display listens.
        DESKTOP_CLONE_DURATION.observe(cloned - started)
        DESKTOP_BOOT_DURATION.labels(virt_type=plan.virt_type).observe(time.monotonic() - booting)
        log.info(
            "host %s: desktop %s started in %.1f s (%s), VNC %s:%d",
            self.host.name,
            name,
            time.monotonic() - started,
            plan.virt_type,
            endpoint.host,
            endpoint.port,
        )
        return endpoint

    def _undo(self, what: str, action: Callable[[], None]) -> None:
        # Clean-up must not hide the error that made it necessary; a leftover is logged for the reconciler.
        try:
            action()
        except libvirt.libvirtError as exc:
            log.warning(
                "host %s: could not %s while undoing a failed start: %s",
                self.host.name,
                what,
                _error_text(exc),
            )

    def _plan(
        self, conn: libvirt.virConnect, spec: DesktopSpec, base: BaseVolumes, disk: str, console_log: str
    ) -> domain_xml.DomainPlan:
        return domain_xml.DomainPlan(
            name=spec.domain_name,
            virt_type=self._virt_type_of(conn),
            memory_mib=spec.memory_mib,
            vcpus=spec.vcpus,
            disk=disk,
            vnc_listen=self.host.vnc_listen,
            image_name=spec.image.name,
            image_version=spec.image.version,
            label=spec.label,
            kernel=base.kernel,
            initrd=base.initrd,
            cmdline=domain_xml.kernel_cmdline(spec.image.cmdline, spec.domain_name, spec.label),
            console_log=console_log,
            vnc_password=spec.vnc_password,
        )

    def _wait_for_vnc(self, domain: libvirt.virDomain) -> DisplayEndpoint:
        # libvirt picks the autoport while starting QEMU; poll the live XML until it shows up.
        deadline = time.monotonic() + VNC_PORT_TIMEOUT_S
        while True:
            endpoint = domain_xml.vnc_endpoint(domain.XMLDesc(0))
            if endpoint is not None:
                return self._endpoint(*endpoint)
            if time.monotonic() > deadline:
                raise ValueError(f"no VNC port assigned within {VNC_PORT_TIMEOUT_S:.0f} s")
            time.sleep(POLL_INTERVAL_S)

    def _endpoint(self, address: str, port: int) -> DisplayEndpoint:
        # A wildcard listen address is reachable at the host's own name (or loopback for a local host).
        if address in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            address = urlsplit(self.host.uri).hostname or "127.0.0.1"
        return DisplayEndpoint(host=address, port=port)

    # -- storage ---------------------------------------------------------------------------------------

    def _lookup_pool(self, conn: libvirt.virConnect) -> libvirt.virStoragePool | None:
        try:
            return conn.storagePoolLookupByName(self.host.storage_pool)
        except libvirt.libvirtError as exc:
            if _error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None
            raise

    def _ensure_pool(self, conn: libvirt.virConnect) -> libvirt.virStoragePool:
        """The host's pool, defined as a directory pool at host.storage_path if it does not exist yet."""
        pool = self._lookup_pool(conn)
        if pool is None:
            try:
                pool = conn.storagePoolDefineXML(
                    domain_xml.dir_pool_xml(self.host.storage_pool, self.host.storage_path), 0
                )
                pool.build(0)
                log.info(
                    "host %s: defined storage pool %s at %s",
                    self.host.name,
                    self.host.storage_pool,
                    self.host.storage_path,
                )
            except libvirt.libvirtError:
                pool = self._lookup_pool(conn)  # another provider defined it at the same moment
                if pool is None:
                    raise
        if not pool.isActive():
            with contextlib.suppress(libvirt.libvirtError):
                pool.create(0)  # a concurrent start is fine; the check below tells
            if not pool.isActive():
                raise HypervisorError(self.host.name, f"storage pool {self.host.storage_pool} will not start")
        if not pool.autostart():
            pool.setAutostart(1)
        return pool

    @staticmethod
    def _lookup_volume(pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if _error_code(exc) == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise

    def _delete_volume(self, pool: libvirt.virStoragePool, name: str) -> None:
        volume = self._lookup_volume(pool, name)
        if volume is None:
            return
        try:
            volume.delete(0)
        except libvirt.libvirtError as exc:
            if _error_code(exc) != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise

    @staticmethod
    def _desktop_volume_names(domain_name: str) -> tuple[str, str]:
        return domain_name + ".qcow2", domain_name + CONSOLE_LOG_SUFFIX

    @staticmethod
    def _create_volume(
        pool: libvirt.virStoragePool,
        name: str,
        capacity: int,
        fmt: str,
        mode: str,
        backing: str | None = None,
    ) -> libvirt.virStorageVol:
        return pool.createXML(domain_xml.volume_xml(name, capacity, fmt, mode, backing), 0)

    def _ensure_base_volumes(
        self, conn: libvirt.virConnect, pool: libvirt.virStoragePool, image: BootImage
    ) -> BaseVolumes:
        prefix = f"{image.name}-{image.version}"
        disk = self._ensure_uploaded(conn, pool, base_disk_volume(image), image.disk, image)
        kernel = self._ensure_uploaded(conn, pool, f"{prefix}.kernel", image.kernel) if image.kernel else None
        initrd = self._ensure_uploaded(conn, pool, f"{prefix}.initrd", image.initrd) if image.initrd else None
        return BaseVolumes(disk=disk, kernel=kernel, initrd=initrd)

    def _ensure_uploaded(
        self,
        conn: libvirt.virConnect,
        pool: libvirt.virStoragePool,
        name: str,
        source: Path,
        checked: BootImage | None = None,
    ) -> str:
        """Path of volume `name` holding the bytes of the local file `source`, uploading it if needed.

        Volumes are created empty and grow with the upload, so a size equal to the source's means the
        upload finished; a shorter one is left from an interrupted upload and is replaced. With
        `checked` carrying a SHA-256, a fresh upload is read back and compared before it is used.
        """
        size = Path(source).stat().st_size
        with _upload_lock((self.host.uri, self.host.storage_pool, name)):
            volume = self._lookup_volume(pool, name)
            if volume is not None and self._physical_size(volume) == size:
                return volume.path()
            if volume is not None:
                log.warning("host %s: volume %s is incomplete; uploading it again", self.host.name, name)
                volume.delete(0)
            return self._upload(conn, pool, name, Path(source), size, checked)

    @staticmethod
    def _physical_size(volume: libvirt.virStorageVol) -> int:
        return volume.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]

    def _upload(
        self,
        conn: libvirt.virConnect,
        pool: libvirt.virStoragePool,
        name: str,
        source: Path,
        size: int,
        checked: BootImage | None = None,
    ) -> str:
        started = time.monotonic()
        # Base images are shared read-only by every desktop on the host, whichever user QEMU runs as.
        volume = self._create_volume(pool, name, 0, "raw", "0644")
        try:
            self._send_file(conn, volume, source, size)
            uploaded = self._physical_size(volume)
            if uploaded != size:
                raise HypervisorError(self.host.name, f"upload of {name} stored {uploaded} of {size} bytes")
            if checked is not None and checked.sha256:
                self._verify_upload(conn, volume, checked)
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                volume.delete(0)
            raise
        log.info(
            "host %s: uploaded %s (%d bytes) in %.1f s",
            self.host.name,
            name,
            size,
            time.monotonic() - started,
        )
        return volume.path()

    def _verify_upload(
        self, conn: libvirt.virConnect, volume: libvirt.virStorageVol, image: BootImage
    ) -> None:
        """Read the uploaded disk back from the host and compare it with the catalog's SHA-256."""
        actual = self._volume_sha256(conn, volume)
        if actual != image.sha256:
            raise ImageChecksumMismatch(
                self.host.name,
                f"image {image.name} {image.version}: sha256 of the uploaded copy is {actual}, not the "
                f"catalog's {image.sha256}; the volume was removed",
            )
        log.info("host %s: image %s %s verified after upload", self.host.name, image.name, image.version)

    @staticmethod
    def _volume_sha256(conn: libvirt.virConnect, volume: libvirt.virStorageVol) -> str:
        size = volume.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
        digest = hashlib.sha256()
        stream = conn.newStream(0)
        try:
            volume.download(stream, 0, size, 0)
            stream.recvAll(lambda _stream, data, _opaque: digest.update(data), None)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise
        return digest.hexdigest()

    @staticmethod
    def _send_file(conn: libvirt.virConnect, volume: libvirt.virStorageVol, source: Path, size: int) -> None:
        stream = conn.newStream(0)
        try:
            volume.upload(stream, 0, size, 0)
            with source.open("rb") as reader:
                stream.sendAll(lambda _stream, nbytes, _opaque: reader.read(min(nbytes, UPLOAD_CHUNK)), None)
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            raise

    @staticmethod
    def _download_tail(conn: libvirt.virConnect, volume: libvirt.virStorageVol, max_bytes: int) -> bytes:
        size = volume.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
        offset = max(0, size - max_bytes)
        if size == offset:
            return b""
        chunks: list[bytes] = []
        stream = conn.newStream(0)
        volume.download(stream, offset, size - offset, 0)
        stream.recvAll(lambda _stream, data, _opaque: chunks.append(data), None)
        stream.finish()
        return b"".join(chunks)


def base_disk_volume(image: BootImage) -> str:
    """The volume a version's disk is uploaded as: `<name>-<version>.qcow2`."""
    return f"{image.name}-{image.version}.qcow2"


def kvm_usable(conn: libvirt.virConnect) -> bool:
    """Whether KVM on this host is hardware virtualization, not just a /dev/kvm that QEMU can open.

    Some nested sandboxes offer a /dev/kvm without VMX/SVM behind it; libvirt then lists kvm domains,
    but a Linux guest takes minutes to boot under it where TCG takes seconds. So both must hold: libvirt
    can run kvm domains, and the host CPU it reports has VMX or SVM.
    """
    try:
        conn.getDomainCapabilities(None, domain_xml.ARCH, None, "kvm", 0)
    except libvirt.libvirtError:
        return False
    host_cpu = ET.fromstring(conn.getCapabilities()).find("./host/cpu")  # noqa: S314 - libvirt's own XML
    features = (
        {feature.get("name") for feature in host_cpu.findall("feature")} if host_cpu is not None else set()
    )
    return bool(features & {"vmx", "svm"})
