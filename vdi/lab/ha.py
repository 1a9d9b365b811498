"""Several brokers and gateways on one PostgreSQL behind the lab's HAProxy (docs/ha.md).

`HaLab` writes one configuration file per process (the brokers share the database, the cookie secret and
the pools; each has its own port), migrates the database once, starts the brokers and gateways as real
`vdi broker` / `vdi gateway` processes (through `python -m vdi.lab.stub_desktops`, which is `vdi` with the
lab's stub desktop provider registered) and HAProxy in front of them. The failover tests and
`vdi bench logon-storm` use it; `kill_broker` / `kill_gateway` send SIGKILL, like a crash.

The directory (slapd) and PostgreSQL are the caller's: a test session's, or the ones the bench starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sso.config import LdapSettings
from vdi.lab.haproxy import Backend, HAProxy
from vdi.lab.stub_desktops import stub_uri

START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.1
# Run the processes from this source tree (a worktree may shadow an editable install elsewhere).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PoolSpec:
    """A floating pool of stub desktops for the lab's users."""

    name: str
    groups: list[str]
    spares: int = 2
    max_size: int | None = None
    display_name: str = ""

    def toml(self) -> str:
        lines = [
            "[[pools]]",
            f'name = "{self.name}"',
            f'display_name = "{self.display_name or self.name}"',
            f"groups = {_toml_list(self.groups)}",
            'kind = "floating"',
            f"spares = {self.spares}",
        ]
        if self.max_size is not None:
            lines.append(f"max_size = {self.max_size}")
        return "\n".join(lines) + "\n"


@dataclass
class Member:
    """One broker or gateway process of the lab."""

    kind: str  # "broker" or "gateway"
    name: str  # b1, b2, g1, g2: HAProxy's server names
    port: int
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class HaLab:
    state_dir: Path
    database_url: str
    ldap: LdapSettings
    rfb_port: int
    pools: list[PoolSpec]
    brokers: int = 2
    gateways: int = 2
    log_level: str = "INFO"
    lease_ttl_s: float = 10.0
    max_desktops: int = 100000
    extra_toml: str = ""  # more sections, appended to every process's file
    db_pool_size: int = 5  # [database] pool_size: connections (and database threads) per process
    stub_hosts: int = 1  # hosts stub1…stubN; placement claims on one host are serialised (generation guard)
    front_port: int = field(default_factory=free_port)
    members: list[Member] = field(default_factory=list)
    haproxy: HAProxy | None = None

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        self._cookie_secret = secrets.token_urlsafe(32)
        for kind, count, letter in (("broker", self.brokers, "b"), ("gateway", self.gateways, "g")):
            for index in range(1, count + 1):
                name = f"{letter}{index}"
                directory = self.state_dir / name
                self.members.append(
                    Member(kind, name, free_port(), directory / "vdi.toml", directory / f"{kind}.log")
                )
        self.haproxy = HAProxy(
            self.state_dir / "haproxy",
            self.front_port,
            [Backend(m.name, m.port) for m in self.of_kind("broker")],
            [Backend(m.name, m.port) for m in self.of_kind("gateway")],
        )

    # -- what is where ------------------------------------------------------------------------------------

    @property
    def front_url(self) -> str:
        return f"https://127.0.0.1:{self.front_port}"

    @property
    def gateway_url(self) -> str:
        return f"wss://127.0.0.1:{self.front_port}/ws"

    @property
    def desktops_dir(self) -> Path:
        return self.state_dir / "stub-desktops"

    @property
    def stub_host_names(self) -> list[str]:
        return [f"stub{index}" for index in range(1, self.stub_hosts + 1)]

    def stub_desktops(self) -> list[str]:
        """Every stub desktop that exists now, on any stub host."""
        return sorted(path.name for path in self.desktops_dir.glob("*/*"))

    @property
    def certificate(self) -> Path:
        """HAProxy's front certificate (self-signed): what a client of the lab trusts."""
        assert self.haproxy is not None
        return self.haproxy.pem

    def of_kind(self, kind: str) -> list[Member]:
        return [m for m in self.members if m.kind == kind]

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    # -- configuration ------------------------------------------------------------------------------------

    def config_text(self, member: Member) -> str:
        broker_port = member.port if member.kind == "broker" else self.of_kind("broker")[0].port
        gateway_port = member.port if member.kind == "gateway" else self.of_kind("gateway")[0].port
        host = "".join(
            f'[[hosts]]\nname = "{name}"\nprovider = "stub"\n'
            f'uri = "{stub_uri(self.desktops_dir / name, self.rfb_port)}"\nmax_desktops = {self.max_desktops}\n'
            for name in self.stub_host_names
        )
        return f"""# {member.name} of the lab's HA set (vdi/lab/ha.py)
[database]
url = "{self.database_url}"
pool_size = {self.db_pool_size}

[logging]
level = "{self.log_level}"

[broker]
port = {broker_port}
cookie_secret = "{self._cookie_secret}"
gateway_url = "{self.gateway_url}"
lease_ttl_s = {self.lease_ttl_s}
# HAProxy terminates TLS on loopback and sends X-Forwarded-For/-Proto (docs/ha.md).
trusted_proxies = ["127.0.0.1/32"]

[gateway]
port = {gateway_port}
allowed_origins = ["{self.front_url}"]

[ldap]
url = "{self.ldap.url}"
user_base = "{self.ldap.user_base}"
group_base = "{self.ldap.group_base}"

{host}
{"".join(pool.toml() for pool in self.pools)}
{self.extra_toml}"""

    def write_configs(self) -> None:
        for member in self.members:
            member.config_path.parent.mkdir(parents=True, exist_ok=True)
            member.config_path.write_text(self.config_text(member), encoding="utf-8")
            member.config_path.chmod(0o600)

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate the database once, start every broker and gateway, then HAProxy; all healthy on return."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.desktops_dir.mkdir(exist_ok=True)
        self.write_configs()
        first = self.members[0]
        # Once, before any broker: two brokers migrating one empty database at once would race.
        self._vdi(first, ["db", "upgrade"])
        try:
            # One after the other: each broker writes the pools of its file into the database at start,
            # and two doing that at once collide on the pools' primary key.
            for member in self.members:
                self._start_healthy(member)
            assert self.haproxy is not None
            self.haproxy.brokers = [Backend(m.name, m.port) for m in self.of_kind("broker")]
            self.haproxy.gateways = [Backend(m.name, m.port) for m in self.of_kind("gateway")]
            self.haproxy.start()
            self.wait_front_sees(lambda state: state.startswith("UP"), "every backend UP")
        except BaseException:
            self.stop()
            raise

    def _start_healthy(self, member: Member, tries: int = 3) -> None:
        # On a busy machine another program may take a free port before we bind it: take another one.
        for attempt in range(tries):
            self.start_member(member)
            try:
                self.wait_healthy(member)
                return
            except RuntimeError:
                if attempt + 1 == tries or "Address already in use" not in _tail(member.log_path):
                    raise
            member.port = free_port()
            member.config_path.write_text(self.config_text(member), encoding="utf-8")

    def start_member(self, member: Member) -> None:
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(
                self._argv(member, [member.kind]),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                cwd=SOURCE_ROOT,
            )

    def wait_healthy(self, member: Member, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not _http_ok(member.health_url):
            if not member.alive():
                raise RuntimeError(f"{member.name} exited: {_tail(member.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{member.name} not healthy in {timeout_s:.0f} s: {_tail(member.log_path)}"
                )
            time.sleep(POLL_S)

    def wait_front_sees(self, check, what: str, timeout_s: float = 30.0, names: list[str] | None = None):
        """Poll HAProxy's view of its servers until `check(state)` holds for `names` (default: all)."""
        assert self.haproxy is not None
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.haproxy.servers()
            chosen = {k: v for k, v in states.items() if names is None or k.split("/")[1] in names}
            if chosen and all(check(state) for state in chosen.values()):
                return states
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy never saw {what}: {states}")
            time.sleep(POLL_S)

    def kill(self, name: str) -> None:
        """SIGKILL one broker or gateway, like a crash, and reap it."""
        member = self.member(name)
        assert member.process is not None
        member.process.send_signal(signal.SIGKILL)
        member.process.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop HAProxy, then every process (SIGTERM, SIGKILL after a while)."""
        if self.haproxy is not None:
            self.haproxy.stop()
        for member in self.members:
            if member.alive():
                assert member.process is not None
                member.process.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.process is None:
                continue
            try:
                member.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                member.process.kill()
                member.process.wait()

    def describe(self) -> str:
        lines = [f"front: {self.front_url} (gateway {self.gateway_url})"]
        for member in self.members:
            state = "running" if member.alive() else "stopped"
            lines.append(
                f"{member.name}: {member.kind} {state} on 127.0.0.1:{member.port}, log {member.log_path}"
            )
        assert self.haproxy is not None
        lines.append(self.haproxy.describe())
        return "\n".join(lines)

    # -- helpers ------------------------------------------------------------------------------------------

    def _argv(self, member: Member, command: list[str]) -> list[str]:
        return [sys.executable, "-m", "vdi.lab.stub_desktops", "--config", str(member.config_path), *command]

    def _vdi(self, member: Member, command: list[str]) -> None:
        result = subprocess.run(
            self._argv(member, command), capture_output=True, text=True, check=False, cwd=SOURCE_ROOT
        )
        if result.returncode != 0:
            raise RuntimeError(f"vdi {' '.join(command)} failed: {result.stderr.strip()[-2000:]}")


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


def _http_ok(url: str) -> bool:
    # Our own processes' health URLs on loopback, never input.
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
        return response.status == 200
    return False


def _tail(path: Path, size: int = 3000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-size:]
    return "(no log)"
