"""The lab's libvirtd: a local QEMU hypervisor host for the demo and the tests.

There is no systemd on lab machines, so we start `virtlogd` and `libvirtd` as plain daemons with pid files
under the lab's state directory, and stop only what we started. A libvirtd that already answers (a real
host's, or one another session started) is used as it is.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from vdi.lab.locks import exclusive

log = logging.getLogger(__name__)

URI = "qemu:///system"
# Debian builds the QEMU driver to run guests as this user; libvirt-daemon-system would create it.
QEMU_USER = "libvirt-qemu"
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
LOG_DIR = Path("/var/log/libvirt")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.1


class LibvirtDaemonError(RuntimeError):
    """libvirtd could not be started or stopped; the message says which daemon and where its log is."""


def _virsh_version_works(timeout_s: float = 10.0) -> bool:
    try:
        result = subprocess.run(
            ["virsh", "-c", URI, "version"], capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _unix_socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def ensure_qemu_user() -> None:
    """Create the user and group QEMU runs as, and let it open /dev/kvm, unless they exist."""
    try:
        grp.getgrnam(QEMU_USER)
    except KeyError:
        subprocess.run(["groupadd", "--system", QEMU_USER], check=True, capture_output=True)
    try:
        pwd.getpwnam(QEMU_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--gid",
                QEMU_USER,
                "--home-dir",
                "/var/lib/libvirt",
                "--shell",
                "/usr/sbin/nologin",
                QEMU_USER,
            ],
            check=True,
            capture_output=True,
        )
    _add_to_kvm_group()


def _add_to_kvm_group() -> None:
    try:
        kvm = grp.getgrnam("kvm")
    except KeyError:
        return  # no KVM on this machine: guests run under TCG and need no device access
    if QEMU_USER not in kvm.gr_mem:
        subprocess.run(["usermod", "-a", "-G", "kvm", QEMU_USER], check=True, capture_output=True)


class LibvirtDaemon:
    """Starts and stops virtlogd and libvirtd for the lab, remembering what it started."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.virtlogd_pid_file = self.state_dir / "virtlogd.pid"
        self.libvirtd_pid_file = self.state_dir / "libvirtd.pid"
        self.log_file = self.state_dir / "libvirtd.log"
        self.virtlogd_log_file = self.state_dir / "virtlogd.log"

    def healthy(self) -> bool:
        return _virsh_version_works()

    def describe(self) -> str:
        state = "answering" if self.healthy() else "not answering"
        owner = "started by the lab" if self._we_started_libvirtd() else "not started by the lab"
        return f"libvirtd at {URI}: {state} ({owner}; log {self.log_file})"

    def start(self) -> bool:
        """Start virtlogd and libvirtd unless libvirtd already answers; True if this call started libvirtd.

        Several processes (test sessions, `vdi lab start`) may call this at once: the check and the start
        happen under an exclusive lock, so only one of them spawns the daemons and the others find them up.
        """
        with self._exclusive():
            if self.healthy():
                log.info("libvirtd already answers at %s; using it", URI)
                return False
            self._start()
            return True

    def _exclusive(self) -> contextlib.AbstractContextManager[None]:
        return exclusive(self.state_dir / ".lock")

    def _start(self) -> None:
        self._prepare_host()
        if not _unix_socket_answers(VIRTLOGD_SOCKET):
            self._spawn("virtlogd", self.virtlogd_pid_file, self.virtlogd_log_file)
            self._wait_for(
                "virtlogd",
                self.virtlogd_pid_file,
                self.virtlogd_log_file,
                lambda: _unix_socket_answers(VIRTLOGD_SOCKET),
            )
        self._spawn("libvirtd", self.libvirtd_pid_file, self.log_file)
        self._wait_for("libvirtd", self.libvirtd_pid_file, self.log_file, _virsh_version_works)
        log.info("libvirtd started; log in %s", self.log_file)

    def stop(self) -> None:
        with self._exclusive():
            # libvirtd first: it holds connections to virtlogd for its guests' logs.
            for name, pid_file in (
                ("libvirtd", self.libvirtd_pid_file),
                ("virtlogd", self.virtlogd_pid_file),
            ):
                self._stop_one(name, pid_file)

    def _we_started_libvirtd(self) -> bool:
        pid = _read_pid(self.libvirtd_pid_file)
        return pid is not None and _process_alive(pid)

    def _prepare_host(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # libvirtd refuses to start its QEMU driver without its log directory and the QEMU user.
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        ensure_qemu_user()

    @staticmethod
    def _spawn(name: str, pid_file: Path, log_file: Path) -> None:
        env = dict(os.environ)
        # Daemonized libvirt logs nowhere by default; keep errors where describe() and failures point.
        env["LIBVIRT_LOG_OUTPUTS"] = f"3:file:{log_file}"
        argv = [name, "--daemon", "--pid-file", str(pid_file)]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30, check=False)
        if result.returncode != 0:
            raise LibvirtDaemonError(f"{name} failed to start: {result.stderr.strip() or result.returncode}")

    @staticmethod
    def _wait_for(name: str, pid_file: Path, log_file: Path, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if ready():
                return
            pid = _read_pid(pid_file)
            if pid is not None and not _process_alive(pid):
                raise LibvirtDaemonError(f"{name} exited during start-up; see {log_file}")
            time.sleep(POLL_INTERVAL_S)
        raise LibvirtDaemonError(f"{name} did not answer within {START_TIMEOUT_S:.0f} s; see {log_file}")

    def _stop_one(self, name: str, pid_file: Path) -> None:
        pid = _read_pid(pid_file)
        # A stale pid file may name a reused pid; only signal the daemon we started.
        if pid is None or not _process_alive(pid) or _process_name(pid) != name:
            pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _process_alive(pid):
            if time.monotonic() > deadline:
                log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, STOP_TIMEOUT_S)
                os.kill(pid, signal.SIGKILL)
                break
            time.sleep(POLL_INTERVAL_S)
        pid_file.unlink(missing_ok=True)
        log.info("%s stopped", name)
