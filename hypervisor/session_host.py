"""The session-host provider (server-based computing): one TigerVNC Xvnc per user session on a Linux server.

A session host is a Linux server the broker reaches over SSH (paramiko, key login, host key checked, one
connection per host reused by every call). For each session the broker asks for, the provider, as root on
the host (hypervisor/session_scripts.py has the scripts and the layout):

1. checks the host has Xvnc and knows the user (`getent passwd`, so local accounts, nslcd and SSSD alike),
   takes a free display :N atomically, and writes the session's state file;
2. checks the user can run the session's programs, writes the session's VNC password (`vncpasswd -f`,
   password on stdin) and a fresh X cookie into files only that user can read, and makes the session's
   cgroups with the pool's CPU and memory limits;
3. starts `Xvnc :N` as the user (`setpriv --reuid --regid --init-groups --reset-env`, no PAM, no systemd
   needed) inside those cgroups, listening on 127.0.0.1:5900+N only, VncAuth with that password, X clients
   authenticated by the cookie (so another user on the host cannot open the display's X socket either), and
   waits for Xvnc's own word that it accepts connections (-displayfd into a FIFO, no polling);
4. starts the window manager and the desktop session, or the published application, the same way with
   DISPLAY and XAUTHORITY set, in the user's home.

All four steps are one script (scripts.START) in one SSH round trip; the user's names and commands reach it
as positional arguments only.

Destroying a session kills what is in its cgroups (cgroup.kill): the session's processes, never the user's
others, and nothing the user started can leave them (only root may move processes between them). The
display endpoint is 127.0.0.1:5900+N on the host; the gateway reaches it through the host's sshd.

Host URI: `ssh://[user@]host[:port]`, by default with the key /etc/smartwork-vdi/session_host_ed25519 and
the known_hosts /etc/smartwork-vdi/known_hosts; the configuration file (not the admin API) may name others
as `?keyfile=…&known_hosts=…`.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qsl, urlsplit

import hypervisor.session_scripts as scripts
from hypervisor.base import (
    DesktopNotFound,
    DesktopSpec,
    DisplayEndpoint,
    HostStats,
    HypervisorError,
    Readiness,
)
from hypervisor.config import HostSettings, SshAddress
from hypervisor.provider import DesktopProvider
from hypervisor.ssh_host import COMMAND_TIMEOUT_S, ChannelRefused, SshHost

log = logging.getLogger(__name__)

URI_PATTERN = re.compile(
    r"^ssh://(?:[A-Za-z_][A-Za-z0-9._-]{0,31}@)?[A-Za-z0-9.\[\]:-]+(?::\d{1,5})?/?(?:\?.*)?$"
)
URI_PARAMETERS = frozenset({"keyfile", "known_hosts"})
DEFAULT_KEY_FILE = Path("/etc/smartwork-vdi/session_host_ed25519")
DEFAULT_KNOWN_HOSTS = Path("/etc/smartwork-vdi/known_hosts")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# POSIX portable user names, as Debian's adduser accepts them by default.
USER_PATTERN = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10
# The session's program must stay up this long (s) after it started: one that exits at once (cannot open its
# display, bad arguments) fails the start instead of leaving a session that is over.
APP_SETTLE_S = "0.2"
DEFAULT_GEOMETRY = "1280x800"
DEFAULT_SESSION = ("openbox-session",)
RFB_BANNER = b"RFB "
PREPARE_ERRORS = {
    scripts.EXIT_NO_XVNC: "has no Xvnc (install tigervnc-standalone-server and tigervnc-tools)",
    scripts.EXIT_UNKNOWN_USER: "has no account {user} (check nslcd/SSSD or the local accounts)",
    scripts.EXIT_FULL: "has no free X display left",
    scripts.EXIT_EXISTS: "already has a session named {name}",
    scripts.EXIT_NO_CGROUPS: "has no cgroup hierarchy under /sys/fs/cgroup to hold sessions",
    scripts.EXIT_BAD_ACCOUNT: "has an account {user} whose home or ids are not plain paths and numbers",
}


class SessionNameTaken(HypervisorError):
    """The host already has a session of that name (not ours to remove)."""


@dataclass(frozen=True)
class SessionInfo:
    """A session of ours on the host, as STATUS reports it."""

    name: str
    user: str
    display: int
    port: int
    kind: str
    xvnc: bool
    wm: bool
    app: bool

    @classmethod
    def parse(cls, line: str) -> SessionInfo:
        name, user, display, port, kind, xvnc, wm, app = line.split()
        return cls(name, user, int(display), int(port), kind, xvnc == "1", wm == "1", app == "1")

    @property
    def running(self) -> bool:
        return self.xvnc and self.app


@dataclass(frozen=True)
class SessionUsage:
    memory_bytes: int
    cpu_usec: int | None  # None where the host's cgroups do not count CPU time (no cgroup v2)


@dataclass(frozen=True)
class Prepared:
    """A session whose state, display, password and cgroups exist on the host, before anything runs."""

    name: str
    display: int
    gid: str
    cgroups: tuple[str, ...]

    @property
    def port(self) -> int:
        return 5900 + self.display


def uri_parts(uri: str) -> tuple[SshAddress, dict[str, str]]:
    parts = urlsplit(uri)
    netloc = parts.netloc
    address = SshAddress.parse(netloc) if netloc else None
    if address is None or parts.scheme != "ssh":
        raise ValueError("expected ssh://[user@]host[:port]")
    return address, dict(parse_qsl(parts.query, keep_blank_values=True))


class SessionHostProvider(DesktopProvider):
    """Desktops as Xvnc sessions of the users' own accounts on a Linux session host, over SSH."""

    needs_image = False
    runs_sessions = True

    @classmethod
    def check_uri(cls, uri: str) -> None:
        if not URI_PATTERN.match(uri):
            raise ValueError("expected ssh://[user@]host[:port]")
        _, params = uri_parts(uri)
        unknown = sorted(set(params) - URI_PARAMETERS)
        if unknown:
            raise ValueError(
                f"the URI parameter {unknown[0]!r} is not allowed (allowed: keyfile, known_hosts)"
            )

    @classmethod
    def check_added_uri(cls, uri: str) -> None:
        # Through the API a URI must not point the broker at other key files: the configuration's own.
        cls.check_uri(uri)
        if urlsplit(uri).query:
            raise ValueError("expected ssh://[user@]host[:port] without parameters")

    def __init__(self, host: HostSettings) -> None:
        super().__init__(host)
        address, params = uri_parts(host.uri)
        self.ssh = SshHost(
            host.name,
            address,
            Path(params.get("keyfile") or DEFAULT_KEY_FILE),
            Path(params.get("known_hosts") or DEFAULT_KNOWN_HOSTS),
        )
        self._cpu_sample: tuple[int, int] | None = None  # (busy, total) jiffies of /proc/stat

    def close(self) -> None:
        self.ssh.close()

    # -- running scripts -------------------------------------------------------------------------

    def _script(
        self, script: str, *args: str, stdin: bytes = b"", timeout: float = COMMAND_TIMEOUT_S
    ) -> tuple[int, str, str]:
        result = self.ssh.run(["sh", "-c", script, "sh", *args], stdin=stdin, timeout=timeout)
        return result.status, result.stdout, result.stderr.strip()

    def _fail(self, name: str, what: str, detail: str) -> HypervisorError:
        # stderr of our scripts names paths and commands, never the password (it only travels on stdin).
        return HypervisorError(self.host.name, f"cannot {what} session {name}: {detail or 'failed'}")

    # -- the DesktopProvider contract ------------------------------------------------------------

    def create_desktop(self, spec: DesktopSpec) -> DisplayEndpoint:
        self._check_spec(spec)
        started = time.monotonic()
        try:
            prepared = self._start_session(spec)
        except SessionNameTaken:
            raise  # that session is not ours to remove
        except BaseException:
            self._undo(spec.domain_name)
            raise
        log.info(
            "host %s: session %s of %s started in %.2f s on display :%d",
            *(self.host.name, spec.domain_name, spec.user, time.monotonic() - started, prepared.display),
        )
        return DisplayEndpoint(LOOPBACK, prepared.port)

    def destroy_desktop(self, domain_name: str) -> None:
        self._check_name(domain_name)
        self._remove(domain_name)

    def desktop_state(self, domain_name: str) -> str:
        session = self._sessions().get(domain_name)
        if session is None:
            return "missing"
        # A session whose Xvnc or main program ended is over: like a VM that shut itself off.
        return "running" if session.running else "shutoff"

    def display(self, domain_name: str) -> DisplayEndpoint:
        session = self._sessions().get(domain_name)
        if session is None:
            raise DesktopNotFound(self.host.name, f"no session {domain_name}")
        return DisplayEndpoint(LOOPBACK, session.port)

    def list_desktops(self) -> list[str]:
        return sorted(self._sessions())

    def ended_desktops(self) -> list[str]:
        # Xvnc or the session's program gone: the user logged out, or the application was closed.
        return sorted(name for name, session in self._sessions().items() if not session.running)

    def sessions(self) -> list[SessionInfo]:
        """Every session of ours on the host, with its user and what of it still runs."""
        return list(self._sessions().values())

    def usage(self, domain_name: str) -> SessionUsage:
        """The session's memory and CPU time now, from its cgroups (for density figures and monitoring)."""
        status, out, err = self._script(scripts.USAGE, domain_name)
        figures = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
        if status != 0 or "memory" not in figures:
            raise self._fail(domain_name, "read the usage of", err or "no memory figure")
        cpu = figures.get("cpu_usec")
        return SessionUsage(int(figures["memory"]), int(cpu) if cpu is not None else None)

    def probe(self) -> str:
        status, out, _ = self._script("command -v Xvnc >/dev/null && nproc")
        if status != 0:
            raise HypervisorError(self.host.name, PREPARE_ERRORS[scripts.EXIT_NO_XVNC])
        return f"session host, {out.strip()} CPUs, {len(self._sessions())} sessions"

    def host_stats(self) -> HostStats:
        status, out, err = self._script(scripts.STATS)
        if status != 0:
            raise HypervisorError(self.host.name, f"cannot read host figures: {err}")
        lines = out.splitlines()
        cpus = int(lines[0])
        jiffies = [int(n) for n in lines[1].split()[1:]]
        memory = {line.split(":")[0]: int(line.split()[1]) // 1024 for line in lines[2:]}
        return HostStats(
            free_memory_mib=memory.get("MemAvailable", 0),
            cpu_load=self._cpu_load(jiffies),
            running_desktops=len(self._sessions()),
            cpus=cpus,
            memory_mib=memory.get("MemTotal"),
        )

    def readiness(self, domain_name: str) -> Readiness:
        session = self._sessions().get(domain_name)
        if session is None:
            return Readiness(ready=False, crashed="the session is gone")
        if not session.xvnc:
            return Readiness(ready=False, crashed="Xvnc exited")
        if not session.app:
            return Readiness(
                ready=False, crashed=f"the {'application' if session.kind == 'app' else 'session'} exited"
            )
        if not self._rfb_answers(session.port):
            return Readiness(ready=False, waiting_for="the display to answer")
        return Readiness(ready=True)

    # -- steps -----------------------------------------------------------------------------------

    def _check_spec(self, spec: DesktopSpec) -> None:
        self._check_name(spec.domain_name)
        if not spec.user or not USER_PATTERN.match(spec.user):
            raise HypervisorError(
                self.host.name, f"session {spec.domain_name}: not a user name: {spec.user!r}"
            )
        if not spec.vnc_password:
            # A display without a password would be open to every account on the host.
            raise HypervisorError(self.host.name, f"session {spec.domain_name}: no VNC password in the spec")
        if spec.kind not in ("session", "app"):
            raise HypervisorError(self.host.name, f"session {spec.domain_name}: unknown kind {spec.kind!r}")
        if spec.kind == "app" and not spec.command:
            raise HypervisorError(
                self.host.name, f"session {spec.domain_name}: an app session needs a command"
            )

    def _check_name(self, name: str) -> None:
        if not NAME_PATTERN.match(name):
            raise HypervisorError(self.host.name, f"not a session name: {name!r}")

    def _start_session(self, spec: DesktopSpec) -> Prepared:
        """Prepare, then start Xvnc, the window manager and the program, all in one SSH round trip
        (scripts.START); the step that failed is the last one the script named."""
        cpu = str(int(spec.cpu_limit * 100_000)) if spec.cpu_limit else "max"
        memory = str(spec.memory_limit_mib * 1024 * 1024) if spec.memory_limit_mib else "max"
        password = (spec.vnc_password or "").encode() + b"\n"
        wm, program = list(spec.window_manager), self._program(spec)
        arguments = [spec.domain_name, spec.user, cpu, memory, spec.kind, spec.label or spec.domain_name]
        arguments += [DEFAULT_GEOMETRY, str(START_TIMEOUT_S), APP_SETTLE_S, str(len(wm)), *wm, *program]
        steps = 1 + bool(wm) + 1
        status, out, err = self._script(
            scripts.START, *arguments, stdin=password, timeout=steps * START_TIMEOUT_S + COMMAND_TIMEOUT_S
        )
        lines = [line.split() for line in out.splitlines() if line.strip()]
        prepared = next((line[1:] for line in lines if line[0] == "prepared"), None)
        if prepared is None:
            self._prepare_failed(spec, status, err)
        display, gid, *cgroups = prepared
        started = Prepared(spec.domain_name, int(display), gid, tuple(cgroups))
        if status != 0 or ["ready"] not in lines:
            failed = next((line[1] for line in reversed(lines) if line[0] == "step"), "xvnc")
            self._start_failed(spec.domain_name, failed, status)
        return started

    def _prepare_failed(self, spec: DesktopSpec, status: int, err: str) -> NoReturn:
        if status == scripts.EXIT_NO_COMMAND:
            raise HypervisorError(
                self.host.name, f"session {spec.domain_name}: {spec.user} cannot run {err!r} on this host"
            )
        reason = PREPARE_ERRORS.get(status)
        if reason is None:
            raise self._fail(spec.domain_name, "prepare", err)
        error = SessionNameTaken if status == scripts.EXIT_EXISTS else HypervisorError
        raise error(self.host.name, reason.format(user=spec.user, name=spec.domain_name))

    @staticmethod
    def _program(spec: DesktopSpec) -> list[str]:
        return list(spec.command or DEFAULT_SESSION)

    def _start_failed(self, name: str, what: str, status: int) -> NoReturn:
        label = {"xvnc": "Xvnc", "wm": "the window manager", "app": "the session's program"}[what]
        detail = (
            "exited at once" if status == scripts.EXIT_DIED else f"did not start within {START_TIMEOUT_S} s"
        )
        raise HypervisorError(self.host.name, f"session {name}: {label} {detail}{self._log_tail(name, what)}")

    def _log_tail(self, name: str, what: str) -> str:
        status, out, _ = self._script(f'tail -n 3 {scripts.SESSIONS_DIR}/"$1"/"$2".log', name, what)
        text = " | ".join(line.strip() for line in out.splitlines() if line.strip())[:300]
        return f" ({text})" if status == 0 and text else ""

    def _undo(self, name: str) -> None:
        # Clean-up must not hide the error that made it necessary; a leftover is listed for reconcile.
        try:
            self._remove(name)
        except HypervisorError as exc:
            log.warning(
                "host %s: could not remove session %s after a failed start: %s", self.host.name, name, exc
            )

    def _remove(self, name: str) -> None:
        status, _, err = self._script(scripts.DESTROY, name)
        if status != 0:
            raise self._fail(name, "remove", err)

    def _sessions(self) -> dict[str, SessionInfo]:
        status, out, err = self._script(scripts.STATUS)
        if status != 0:
            raise HypervisorError(self.host.name, f"cannot list sessions: {err}")
        sessions = (SessionInfo.parse(line) for line in out.splitlines() if line.strip())
        return {session.name: session for session in sessions}

    def _rfb_answers(self, port: int) -> bool:
        try:
            channel = self.ssh.open_channel(LOOPBACK, port)
        except ChannelRefused:
            return False
        try:
            channel.settimeout(2.0)
            return channel.recv(12).startswith(RFB_BANNER)
        except OSError:
            return False
        finally:
            channel.close()

    def _cpu_load(self, jiffies: list[int]) -> float | None:
        """Busy share of all CPUs since the last sample (0..1); None on the first."""
        idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)
        sample = (sum(jiffies) - idle, sum(jiffies))
        previous, self._cpu_sample = self._cpu_sample, sample
        if previous is None or sample[1] <= previous[1]:
            return None
        return (sample[0] - previous[0]) / (sample[1] - previous[1])
