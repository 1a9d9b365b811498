"""The multi-host lab: three real libvirt hosts (hv1..hv3), each in a network and a mount namespace of its own.

A host is what a real hypervisor machine looks like from the broker: an address on a network, an sshd that
lets root in with the lab's key only, and a libvirtd reached over `qemu+ssh://`. Concretely, per host:

- a network namespace `swvdi-<name>` whose `eth0` (veth) hangs off the bridge `swvdi-br0` in the root
  namespace; the bridge has 10.77.0.1/24, hosts have 10.77.0.11, .12, .13;
- a "holder" process (`sleep infinity`) in that network namespace and in a private mount namespace, whose
  pid the lab keeps (it also holds a UTS namespace, so the host's hostname is its name): everything of the
  host runs with `nsenter --target <holder> --mount --net --uts`;
- in that mount namespace the host's own /run/libvirt, /run/sshd, /etc/libvirt (a fresh copy), /etc/ssh,
  /var/lib/libvirt, /var/log, /var/cache/libvirt and /var/lib/smartwork-vdi (the libvirt provider's storage pools),
  bind-mounted from `<state>/<name>/fs/`, so a domain or a volume on hv1 does not exist on hv2; the machine's
  root shell startup files (/root/.bashrc, …) read as empty there, so SSH commands run nothing of the machine's;
- virtlogd, libvirtd and sshd (own host key, root by key only, TCP forwarding for the gateway's
  direct-tcpip channels to the host's loopback VNC, no PAM, no passwords; other accounts log in with the
  keys in their own ~/.ssh/authorized_keys). `LabHosts(..., libvirt=False)` makes hosts with sshd only,
  for a test that installs and starts libvirt itself (the Ansible hypervisor role's).

The client side lives in `<state>/ssh/`: one ed25519 client key, a known_hosts with the hosts' keys, an
ssh_config (strict host key checking, batch mode) and `ssh-wrapper`, the `command=` of the hosts' libvirt
URIs (`uri(name)`, printed by `vdi lab hosts status`), so libvirt verifies each host's key and no secret
appears in a URI. docs/lab.md has the whole picture.

`up()` is idempotent: healthy hosts are kept, missing daemons restarted, and leftovers of a crashed run
(namespace without holder, stale links) removed before a host is made afresh. `down()` destroys the guests
of each host, stops every process in its network namespace, and removes namespaces, links and the bridge;
the mounts go with the last process of each mount namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vdi.config import Config
from vdi.lab.libvirtd import ensure_qemu_user
from vdi.lab.locks import exclusive

log = logging.getLogger(__name__)

HOST_NAMES = ("hv1", "hv2", "hv3")
BRIDGE = "swvdi-br0"
NAMESPACE_PREFIX = "swvdi-"
NETWORK_PREFIX = "10.77.0"
ROOT_ADDRESS = f"{NETWORK_PREFIX}.1"
PREFIX_LENGTH = 24
FIRST_HOST_OCTET = 11
SSH_PORT = 22
SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.1

# Where each host's private directories are mounted (inside its mount namespace) → their name under fs/.
HOST_MOUNTS: tuple[tuple[str, str], ...] = (
    ("/run/libvirt", "run-libvirt"),
    ("/run/sshd", "run-sshd"),
    ("/etc/libvirt", "etc-libvirt"),
    ("/etc/ssh", "etc-ssh"),
    ("/var/lib/libvirt", "lib-libvirt"),
    ("/var/log", "log"),
    ("/var/cache/libvirt", "cache-libvirt"),
    ("/var/lib/smartwork-vdi", "smartwork-vdi"),
)

# The machine's root shell startup files, empty inside the hosts. A host's root shares the machine's /root
# (a test runs the machine's Python inside a host), but its SSH commands must not run what the machine's
# root set up for itself: on this machine class, /root/.bashrc runs `pyenv init`, whose rehash takes a lock
# under /root/.pyenv. A command killed with its host (a network cut, `down()`) left that lock behind, and
# every later SSH command on every host then waited 60 s for it.
ROOT_SHELL_STARTUP = ("/root/.bashrc", "/root/.profile", "/root/.bash_profile", "/root/.bash_login")

SSHD_CONFIG = """\
# sshd of lab host {name}; written by vdi.lab.hosts, inside the host's own /etc/ssh.
ListenAddress {address}:{port}
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile /run/sshd/sshd.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
# Other accounts (the gateway's, made by the hypervisor role) use their own ~/.ssh/authorized_keys.
AuthorizedKeysFile /etc/ssh/authorized_keys/%u .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The gateway opens direct-tcpip channels to desktops' VNC servers on the host's loopback.
AllowTcpForwarding yes
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
LogLevel VERBOSE
# root: only the lab's key (good from the lab's side of the bridge), never the machine's /root/.ssh.
Match User root
  AuthorizedKeysFile /etc/ssh/authorized_keys/%u
"""

SSH_CLIENT_CONFIG = """\
# Client side of the lab hosts; used by ssh-wrapper (the command= of their qemu+ssh URIs).
Host *
  User root
  IdentityFile {key}
  IdentitiesOnly yes
  IdentityAgent none
  UserKnownHostsFile {known_hosts}
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  CheckHostIP no
  BatchMode yes
  PasswordAuthentication no
  KbdInteractiveAuthentication no
  ConnectTimeout 5
  LogLevel ERROR
"""

SSH_WRAPPER = """\
#!/bin/sh
# libvirt's ssh transport runs this instead of ssh: the lab's client key, and host keys checked against the
# lab's known_hosts.
exec /usr/bin/ssh -F '{config}' "$@"
"""


class LabHostsError(RuntimeError):
    """A lab host could not be made, started or stopped; the message names the host and where to look."""


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str

    @property
    def namespace(self) -> str:
        return NAMESPACE_PREFIX + self.name

    @property
    def link(self) -> str:
        """The root namespace's end of the host's veth pair (a port of the bridge)."""
        return NAMESPACE_PREFIX + self.name


# -- small process helpers ------------------------------------------------------------------------------


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise LabHostsError(f"{' '.join(argv[:4])} failed: {detail}")
    return result


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _namespace_id(pid: int | str, kind: str) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _socket_answers(family: int, address: object) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(address)
        except OSError:
            return False
    return True


def _wait_for(what: str, ready: Callable[[], bool], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise LabHostsError(f"{what} within {timeout_s:.0f} s")
        time.sleep(POLL_INTERVAL_S)


def _enter(holder: int) -> list[str]:
    """The command prefix that runs a command inside the host whose namespaces `holder` holds."""
    return ["nsenter", f"--target={holder}", "--mount", "--net", "--uts", "--"]


def _same_file(a: str | Path, b: str | Path) -> bool:
    first, second = os.stat(a), os.stat(b)
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def _link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def _namespaces() -> set[str]:
    result = _run(["ip", "netns", "list"], check=False)
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


class LabHosts:
    """The lab's hypervisor hosts: `up()`, `down()`, `status()`, and what tests need to hurt them.

    Client-side files for whoever connects to the hosts (the broker's providers, the gateway's SSH channel):
    `client_key` (ed25519 private key root logs in with), `known_hosts` (the hosts' keys, by address),
    `ssh_config` and `ssh_wrapper` (used by the `command=` of `uri(name)`).
    """

    # (where inside the host, name under fs/) of its private directories; a subclass
    # (vdi/lab/session_hosts.py) adds its own.
    mounts: tuple[tuple[str, str], ...] = HOST_MOUNTS
    # What `status()` reports of each host.
    daemons: tuple[str, ...] = ("virtlogd", "libvirtd", "sshd")

    def __init__(
        self,
        state_dir: Path,
        names: Sequence[str] = HOST_NAMES,
        first_octet: int = FIRST_HOST_OCTET,
        *,
        libvirt: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir)
        # False: the hosts come up with sshd only, their libvirt directories private and empty, for
        # whoever installs and starts libvirt on them (the Ansible hypervisor role's test).
        self.libvirt = libvirt
        if not 1 < first_octet <= 255 - len(names):
            raise LabHostsError(
                f"first_octet {first_octet} leaves no room for {len(names)} hosts in the lab network"
            )
        self.hosts = {
            name: LabHost(name, f"{NETWORK_PREFIX}.{first_octet + i}") for i, name in enumerate(names)
        }
        ssh_dir = self.state_dir / "ssh"
        self.client_key = ssh_dir / "id_ed25519"
        self.known_hosts = ssh_dir / "known_hosts"
        self.ssh_config = ssh_dir / "ssh_config"
        self.ssh_wrapper = ssh_dir / "ssh-wrapper"

    @classmethod
    def for_lab(cls, lab_state_dir: Path) -> LabHosts:
        """The hosts kept under the lab's state directory (what the CLI and the test fixture share)."""
        return cls(Path(lab_state_dir) / "hosts")

    # -- what callers ask ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.hosts)

    def address(self, name: str) -> str:
        return self._host(name).address

    def uri(self, name: str) -> str:
        """The host's libvirt URI: qemu+ssh as root, host key checked, the lab's key; no secret in it."""
        host = self._host(name)
        return f"qemu+ssh://root@{host.address}/system?command={self.ssh_wrapper}&keyfile={self.client_key}"

    def run(self, name: str, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command inside the host (its network and mount namespaces); output captured as text."""
        holder = self._holder_pid(self._host(name))
        if holder is None:
            raise LabHostsError(f"lab host {name} is not up")
        return subprocess.run(
            [*_enter(holder), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def kill_libvirtd(self, name: str) -> None:
        """SIGKILL the host's libvirtd, as a crash would; its guests keep running. `up()` restarts it."""
        host = self._host(name)
        pid = self._daemon_pid(host, "libvirtd")
        if pid is None:
            raise LabHostsError(f"libvirtd of lab host {name} is not running")
        os.kill(pid, signal.SIGKILL)
        _wait_for(f"libvirtd of {name} did not die", lambda: not _alive(pid))
        log.info("lab host %s: libvirtd (pid %d) killed", name, pid)

    def kill_sshd(self, name: str) -> None:
        """SIGKILL every sshd of the host, the listener and each connection's, as a crash would: open SSH
        connections drop and new ones are refused. `up()` starts sshd again."""
        host = self._host(name)
        listed = _run(["ip", "netns", "pids", host.namespace], check=False).stdout.split()
        pids = [int(p) for p in listed if p.isdigit() and _alive(int(p)) and _comm(int(p)) == "sshd"]
        if not pids:
            raise LabHostsError(f"sshd of lab host {name} is not running")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _wait_for(f"sshd of {name} did not die", lambda: not any(_alive(pid) for pid in pids))
        log.info("lab host %s: sshd killed (%d processes)", name, len(pids))

    def cut_network(self, name: str) -> None:
        """Take the host's bridge port down: its traffic is silently dropped, connections hang (no RST)."""
        _run(["ip", "link", "set", self._host(name).link, "down"])
        log.info("lab host %s: network cut", name)

    def restore_network(self, name: str) -> None:
        _run(["ip", "link", "set", self._host(name).link, "up"])
        log.info("lab host %s: network restored", name)

    def healthy(self, name: str | None = None) -> bool:
        names = [name] if name else self.names
        return all(self._answers_over_ssh(self._host(n)) for n in names)

    def status(self) -> str:
        lines = [f"lab hosts (state {self.state_dir}, bridge {BRIDGE} {ROOT_ADDRESS}/{PREFIX_LENGTH}):"]
        for host in self.hosts.values():
            lines.append(self._describe(host))
        return "\n".join(lines)

    # -- up and down -----------------------------------------------------------------------------------

    def up(self) -> None:
        with self._exclusive():
            self._prepare_root()
            self._ensure_client_files()
            self._ensure_bridge()
            for host in self.hosts.values():
                self._ensure_host(host)
            self._write_known_hosts()
        log.info("lab hosts up: %s", ", ".join(f"{h.name} {h.address}" for h in self.hosts.values()))

    def down(self) -> None:
        with self._exclusive():
            for host in self.hosts.values():
                self._remove_host(host)
            self._end_client_connections()
            # Another LabHosts (a test's own throwaway host) may still have ports on the bridge.
            if _link_exists(BRIDGE) and not any(Path(f"/sys/class/net/{BRIDGE}/brif").iterdir()):
                _run(["ip", "link", "del", BRIDGE])
        log.info("lab hosts down")

    def _end_client_connections(self) -> None:
        """End SSH clients still connected to the hosts (by this lab's ssh_config in their arguments).

        libvirt opens qemu+ssh connections by running ssh; a connection its process never closed keeps
        that ssh waiting on a host that is gone, long after the tests or the demo ended. The hosts are
        down now, so nothing can still use them.
        """
        config = os.fsencode(self.ssh_config)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if Path(os.fsdecode(argv[0])).name != "ssh" or config not in argv:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGTERM)
                log.warning("ended SSH client pid %s, still connected to a lab host", entry.name)

    def _exclusive(self) -> contextlib.AbstractContextManager[None]:
        # Two sessions (a test run and `vdi lab hosts up`) must not build or tear down hosts at once.
        return exclusive(self.state_dir / ".lock")

    # -- the root namespace's side ---------------------------------------------------------------------

    def _prepare_root(self) -> None:
        ensure_qemu_user()  # libvirtd's QEMU driver refuses to start without it
        for target, _ in self.mounts:
            Path(target).mkdir(parents=True, exist_ok=True)  # mount points; the hosts mount over them
        os.chmod("/run/sshd", 0o755)  # noqa: S103 - sshd's privilege separation directory, as Debian makes it

    def _ensure_client_files(self) -> None:
        self.client_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.client_key.exists():
            _run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "smartwork-vdi-lab",
                    "-f",
                    str(self.client_key),
                ]
            )
        self.ssh_config.write_text(
            SSH_CLIENT_CONFIG.format(key=self.client_key, known_hosts=self.known_hosts)
        )
        self.ssh_wrapper.write_text(SSH_WRAPPER.format(config=self.ssh_config))
        self.ssh_wrapper.chmod(0o755)

    def _ensure_bridge(self) -> None:
        if not _link_exists(BRIDGE):
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            _run(["ip", "addr", "add", f"{ROOT_ADDRESS}/{PREFIX_LENGTH}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])

    def _write_known_hosts(self) -> None:
        lines = []
        for host in self.hosts.values():
            key_type, key = self._host_key_file(host).with_suffix(".pub").read_text().split()[:2]
            lines.append(f"{host.address} {key_type} {key}\n")
        self.known_hosts.write_text("".join(lines))

    # -- one host --------------------------------------------------------------------------------------

    def _host(self, name: str) -> LabHost:
        try:
            return self.hosts[name]
        except KeyError:
            raise LabHostsError(f"no lab host {name!r}; the hosts are {', '.join(self.hosts)}") from None

    def _host_dir(self, host: LabHost) -> Path:
        return self.state_dir / host.name

    def _fs(self, host: LabHost, part: str) -> Path:
        return self._host_dir(host) / "fs" / part

    def _host_key_file(self, host: LabHost) -> Path:
        return self._host_dir(host) / "ssh_host_ed25519_key"

    def _ensure_host(self, host: LabHost) -> None:
        holder = self._holder_pid(host)
        if holder is None:
            self._remove_host(host)  # whatever a crashed run left: processes, namespace, link
            self._create_network(host)
            self._create_filesystem(host)
            holder = self._start_holder(host)
            self._mount(host, holder)
        if self.libvirt:
            self._ensure_daemon(host, holder, "virtlogd", self._fs(host, "run-libvirt") / "virtlogd-sock")
            self._ensure_daemon(host, holder, "libvirtd", self._fs(host, "run-libvirt") / "libvirt-sock")
        self._ensure_sshd(host, holder)

    def _create_network(self, host: LabHost) -> None:
        ns = host.namespace
        _run(["ip", "netns", "add", ns])
        _run(["ip", "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "netns", ns])
        _run(["ip", "link", "set", host.link, "master", BRIDGE, "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{host.address}/{PREFIX_LENGTH}", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _create_filesystem(self, host: LabHost) -> None:
        """A fresh private tree for the host; only its ssh host key survives from earlier runs."""
        fs = self._host_dir(host) / "fs"
        shutil.rmtree(fs, ignore_errors=True)
        for _, part in self.mounts:
            (fs / part).mkdir(parents=True)
        (fs / "log" / "libvirt").mkdir()
        (fs / "run-sshd").chmod(0o755)
        self._copy_libvirt_config(fs / "etc-libvirt")
        self._write_sshd_files(host, fs / "etc-ssh")
        self._populate(host, fs)

    def _populate(self, host: LabHost, fs: Path) -> None:
        """Hook: fill the host's private tree before it is mounted."""

    @staticmethod
    def _copy_libvirt_config(target: Path) -> None:
        # Only the configuration files: the root host's defined domains and pools must not appear here.
        for source in Path("/etc/libvirt").glob("*.conf"):
            shutil.copy2(source, target / source.name)
        for sub in ("qemu", "storage", "secrets", "nwfilter"):
            (target / sub).mkdir()

    def _write_sshd_files(self, host: LabHost, etc_ssh: Path) -> None:
        key = self._host_key_file(host)
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"lab-{host.name}", "-f", str(key)])
        shutil.copy2(key, etc_ssh / key.name)
        shutil.copy2(key.with_suffix(".pub"), etc_ssh / (key.name + ".pub"))
        (etc_ssh / key.name).chmod(0o600)
        (etc_ssh / "sshd_config").write_text(
            SSHD_CONFIG.format(name=host.name, address=host.address, port=SSH_PORT)
        )
        keys = etc_ssh / "authorized_keys"
        keys.mkdir(mode=0o755)
        client = self.client_key.with_suffix(".pub").read_text().strip()
        # The key is good from the lab's side of the bridge only.
        (keys / "root").write_text(f'from="{ROOT_ADDRESS}" {client}\n')
        (keys / "root").chmod(0o600)

    def _start_holder(self, host: LabHost) -> int:
        """Start `sleep infinity` in the host's network namespace and a new private mount namespace."""
        # The pid file gets its final name only once the mounts are done (see _mount): a holder a crash
        # left without its mounts is never taken for a working host.
        pid_file = self._host_dir(host) / "holder.pid.starting"
        pid_file.unlink(missing_ok=True)
        # ip netns exec and unshare exec rather than fork, so the shell's pid becomes the holder's; setsid
        # --fork detaches it from us (it must outlive `vdi lab hosts up`).
        script = 'echo $$ > "$0"; exec ip netns exec "$1" unshare --mount --uts --propagation private sleep infinity'
        subprocess.run(
            ["setsid", "--fork", "sh", "-c", script, str(pid_file), host.namespace],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
            timeout=START_TIMEOUT_S,
        )
        own_mounts = _namespace_id("self", "mnt")
        _wait_for(
            f"lab host {host.name}: the namespace holder did not start",
            lambda: (
                (pid := _read_pid(pid_file)) is not None
                and _comm(pid) == "sleep"
                and _namespace_id(pid, "mnt") not in (None, own_mounts)
            ),
        )
        pid = _read_pid(pid_file)
        assert pid is not None
        return pid

    def _mount(self, host: LabHost, holder: int) -> None:
        enter = _enter(holder)
        _run([*enter, "hostname", host.name])
        for target, part in self._mount_order():
            _run([*enter, "mount", "--bind", str(self._fs(host, part)), target])
        for startup in ROOT_SHELL_STARTUP:
            if Path(startup).is_file():
                _run([*enter, "mount", "--bind", "/dev/null", startup])
        self._mount_more(enter)
        starting = self._host_dir(host) / "holder.pid.starting"
        starting.rename(starting.with_suffix(""))

    def _mount_order(self) -> list[tuple[str, str]]:
        """The mounts in the order they are made: one over the lab's state directory (/var/lib/smartwork-vdi,
        or /tmp for a test's hosts) hides the other mounts' sources, so it comes last."""
        return sorted(self.mounts, key=lambda mount: self.state_dir.is_relative_to(mount[0]))

    def _mount_more(self, enter: list[str]) -> None:
        """Hook: more mounts inside a new host, made before it counts as up."""

    def _holder_pid(self, host: LabHost) -> int | None:
        """The holder's pid if it runs in the host's network namespace with the host's mounts, else None."""
        pid = _read_pid(self._host_dir(host) / "holder.pid")
        if pid is None or not _alive(pid) or _comm(pid) != "sleep":
            return None
        target, part = self._mount_order()[-1]  # mounted last: if it is there, all are
        try:
            same_network = _same_file(f"/run/netns/{host.namespace}", f"/proc/{pid}/ns/net")
            mounted = _same_file(self._fs(host, part), f"/proc/{pid}/root{target}")
        except OSError:
            return None
        return pid if same_network and mounted else None

    # -- daemons inside a host -------------------------------------------------------------------------

    def _pid_file(self, host: LabHost, daemon: str) -> Path:
        if daemon == "sshd":
            return self._fs(host, "run-sshd") / "sshd.pid"
        return self._fs(host, "run-libvirt") / f"{daemon}.pid"

    def _daemon_pid(self, host: LabHost, daemon: str) -> int | None:
        """The daemon's pid if it runs in the host's mount namespace (a stale pid file names nothing)."""
        holder = self._holder_pid(host)
        pid = _read_pid(self._pid_file(host, daemon))
        if holder is None or pid is None or not _alive(pid) or _comm(pid) != daemon:
            return None
        return pid if _namespace_id(pid, "mnt") == _namespace_id(holder, "mnt") else None

    def _ensure_daemon(self, host: LabHost, holder: int, daemon: str, sock: Path) -> None:
        if self._daemon_pid(host, daemon) is not None:
            return
        log_file = f"/var/log/libvirt/{daemon}.log"  # inside the host
        argv = [daemon, "--daemon", "--pid-file", f"/run/libvirt/{daemon}.pid"]
        env = {**os.environ, "LIBVIRT_LOG_OUTPUTS": f"3:file:{log_file}"}
        result = subprocess.run(
            [*_enter(holder), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        outside_log = self._fs(host, "log") / "libvirt" / f"{daemon}.log"
        if result.returncode != 0:
            raise LabHostsError(f"lab host {host.name}: {daemon} failed to start; see {outside_log}")
        _wait_for(
            f"lab host {host.name}: {daemon} did not answer (see {outside_log})",
            lambda: _socket_answers(socket.AF_UNIX, str(sock)),
        )

    def _ensure_sshd(self, host: LabHost, holder: int) -> None:
        if self._daemon_pid(host, "sshd") is None:
            log_file = self._fs(host, "log") / "sshd.log"
            argv = [SSHD, "-f", "/etc/ssh/sshd_config", "-E", "/var/log/sshd.log"]
            result = self.run(host.name, argv)
            if result.returncode != 0:
                raise LabHostsError(
                    f"lab host {host.name}: sshd failed to start: {result.stderr.strip()}; see {log_file}"
                )
        _wait_for(
            f"lab host {host.name}: sshd did not listen on {host.address}:{SSH_PORT}",
            lambda: _socket_answers(socket.AF_INET, (host.address, SSH_PORT)),
        )

    # -- removal ---------------------------------------------------------------------------------------

    def _remove_host(self, host: LabHost) -> None:
        if host.namespace in _namespaces():
            self._destroy_guests(host)
            self._stop_namespace_processes(host)
            _run(["ip", "netns", "del", host.namespace])
        # Deleting the namespace deletes its veth end and so the pair, but not at once.
        if _link_exists(host.link):
            _run(["ip", "link", "del", host.link], check=False)
            _wait_for(f"lab host {host.name}: link {host.link} stays", lambda: not _link_exists(host.link))
        for pid_file in ("holder.pid", "holder.pid.starting"):
            (self._host_dir(host) / pid_file).unlink(missing_ok=True)

    def _destroy_guests(self, host: LabHost) -> None:
        """Stop the host's guests through its libvirtd, so it cleans up after them (cgroups, ports)."""
        sock = self._fs(host, "run-libvirt") / "libvirt-sock"
        if self._daemon_pid(host, "libvirtd") is None or not _socket_answers(socket.AF_UNIX, str(sock)):
            return
        uri = f"qemu+unix:///system?socket={sock}"
        listed = _run(["virsh", "-c", uri, "list", "--name"], check=False)
        for domain in filter(None, (line.strip() for line in listed.stdout.splitlines())):
            result = _run(["virsh", "-c", uri, "destroy", domain], check=False)
            if result.returncode != 0:
                log.warning("lab host %s: could not destroy %s: %s", host.name, domain, result.stderr.strip())

    def _stop_namespace_processes(self, host: LabHost) -> None:
        def pids() -> list[int]:
            listed = _run(["ip", "netns", "pids", host.namespace], check=False).stdout.split()
            return [int(p) for p in listed if p.isdigit() and _alive(int(p))]

        for pid in pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            _wait_for("", lambda: not pids(), STOP_TIMEOUT_S)
        except LabHostsError:
            for pid in pids():
                log.warning(
                    "lab host %s: %s (pid %d) ignored SIGTERM; killing it", host.name, _comm(pid), pid
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _wait_for(f"lab host {host.name}: processes still running after SIGKILL", lambda: not pids())

    # -- status ----------------------------------------------------------------------------------------

    def _answers_over_ssh(self, host: LabHost) -> bool:
        if self._holder_pid(host) is None:
            return False
        result = _run(["virsh", "-c", self.uri(host.name), "hostname"], check=False, timeout=20)
        return result.returncode == 0

    def _describe(self, host: LabHost) -> str:
        if self._holder_pid(host) is None:
            present = "namespace left over" if host.namespace in _namespaces() else "not running"
            return f"  {host.name} {host.address}: {present}"
        daemons = ", ".join(
            f"{d} {'running' if self._daemon_pid(host, d) else 'stopped'}" for d in self.daemons
        )
        network = "link up" if self._link_up(host) else "link DOWN (network cut)"
        answers = "answers" if self._answers_over_ssh(host) else "does not answer"
        return f"  {host.name} {host.address}: {daemons}; {network}; {answers} at {self.uri(host.name)}"

    @staticmethod
    def _link_up(host: LabHost) -> bool:
        try:
            return int(Path(f"/sys/class/net/{host.link}/flags").read_text(), 16) & 0x1 == 1  # IFF_UP
        except (OSError, ValueError):
            return False


def hosts_command(config: Config, action: str, hosts_action: str | None) -> int:
    """`vdi lab hosts up|down|status`: the hypervisor hosts hv1..hv3 and the session hosts sh1, sh2;
    status exits 3 when a host does not answer over SSH."""
    if action != "hosts" or hosts_action is None:
        print("vdi lab: use `vdi lab hosts up|down|status`", file=sys.stderr)
        return 2
    # A subclass of LabHosts, so imported here rather than at the top (it imports this module).
    from vdi.lab.session_hosts import LabSessionHosts

    labs = [LabHosts.for_lab(config.lab.state_dir), LabSessionHosts.for_lab(config.lab.state_dir)]
    try:
        for lab in labs:
            if hosts_action == "up":
                lab.up()
            elif hosts_action == "down":
                lab.down()
    except LabHostsError as exc:
        print(f"vdi lab hosts {hosts_action}: {exc}", file=sys.stderr)
        return 1
    if hosts_action == "down":
        print("lab hosts are down")
        return 0
    for lab in labs:
        print(lab.status())
        print(f"client key {lab.client_key}, known hosts {lab.known_hosts}")
    return 0 if all(lab.healthy() for lab in labs) else 3
