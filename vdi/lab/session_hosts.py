"""The lab's session hosts (SBC): sh1 and sh2, Linux servers running one Xvnc per user session.

Each is a lab host like hv1..hv3 (vdi/lab/hosts.py: its own network, mount and UTS namespaces on the bridge
swvdi-br0, its own sshd letting root in with the lab's key only), without libvirt, plus what a session host
has of its own:

- its own /etc (a copy of the machine's, made afresh with the host), whose passwd, group and shadow hold the
  demo directory's users (vdi/lab/slapd.py DEMO_USERS) as local accounts with the directory's uidNumber and
  gidNumber and a private group each, so the machine's own account files are never touched and tools like
  useradd (the Ansible role's) work on the host alone. In production the accounts come from the same LDAP
  through nslcd or SSSD (docs/session-hosts.md);
- its own /home (homes persist across sessions while the host lives), /tmp (X sockets and locks) and
  /var/lib/smartwork-vdi (the provider's session state).

Xvnc, the desktop (XFCE's xfwm4 and panel, IBus with ibus-hangul) and the applications are the machine's
packages (scripts/setup.sh, which also generates the ko_KR.UTF-8 locale). The desktop's own files, the same
the smartwork_session_host role installs (ansible/roles/smartwork_session_host/files), go into each host's /etc
at every `up()`: the session script /etc/smartwork-vdi/xsession, its log-out item and the panel's layout.
Sessions' cgroups live in the machine's cgroup tree under `smartwork-vdi/<session>` (names are unique per session);
`down()` removes those of its hosts' sessions after stopping every process in their namespaces.

`uri(name)` is the session-host provider's URI: `ssh://root@<address>?keyfile=…&known_hosts=…`.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Sequence
from pathlib import Path

from vdi.lab.hosts import HOST_MOUNTS, LabHost, LabHosts, _run
from vdi.lab.slapd import DEMO_USERS, DemoUser

SESSION_HOST_NAMES = ("sh1", "sh2")
FIRST_SESSION_HOST_OCTET = 21
SESSIONS_STATE = "smartwork-vdi/sessions"  # under fs/: the host's /var/lib/smartwork-vdi/sessions
SHELL = "/bin/bash"
CGROUP_ROOT = "/sys/fs/cgroup"
ROLE_FILES = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "smartwork_session_host" / "files"
# (file of the role, path under the host's /etc, mode): what the role's desktop tasks install.
DESKTOP_FILES = (
    ("smartwork-xsession", "smartwork-vdi/xsession", 0o755),
    ("xfce4-panel.xml", "xdg/xfce4/xfconf/xfce-perchannel-xml/xfce4-panel.xml", 0o644),
    ("logout.desktop", "smartwork-vdi/logout.desktop", 0o644),
)
XSESSION = "/etc/smartwork-vdi/xsession"


def passwd_line(user: DemoUser) -> str:
    return f"{user.uid}:x:{user.uid_number}:{user.gid_number}:{user.display_name}:/home/{user.uid}:{SHELL}\n"


def group_line(user: DemoUser) -> str:
    return f"{user.uid}:x:{user.gid_number}:\n"


def shadow_line(user: DemoUser) -> str:
    # No password: the accounts only run sessions the broker starts; nobody logs in to them.
    return f"{user.uid}:*:20000:0:99999:7:::\n"


class LabSessionHosts(LabHosts):
    """sh1 (10.77.0.21) and sh2 (10.77.0.22): sshd-only lab hosts with the demo users as local accounts."""

    # /etc first: HOST_MOUNTS' /etc/ssh and /etc/libvirt go over it.
    mounts = (("/etc", "etc"), ("/tmp", "tmp"), ("/home", "home"), *HOST_MOUNTS)  # noqa: S108 - its own /tmp

    daemons = ("sshd",)

    def __init__(
        self,
        state_dir: Path,
        names: Sequence[str] = SESSION_HOST_NAMES,
        first_octet: int = FIRST_SESSION_HOST_OCTET,
        users: Sequence[DemoUser] = DEMO_USERS,
        desktop_files: bool = True,
    ) -> None:
        super().__init__(state_dir, names, first_octet, libvirt=False)
        self.users = tuple(users)
        # False leaves the desktop's files to the smartwork_session_host role (its test applies it).
        self.desktop_files = desktop_files

    @classmethod
    def for_lab(cls, lab_state_dir: Path) -> LabSessionHosts:
        return cls(Path(lab_state_dir) / "session-hosts")

    def uri(self, name: str) -> str:
        """The session-host provider's URI of the host: root over SSH, the lab's key and known_hosts."""
        host = self._host(name)
        return f"ssh://root@{host.address}?keyfile={self.client_key}&known_hosts={self.known_hosts}"

    def _answers_over_ssh(self, host: LabHost) -> bool:
        if self._holder_pid(host) is None:
            return False
        argv = ["ssh", "-F", str(self.ssh_config), host.address, "true"]
        return _run(argv, check=False, timeout=20).returncode == 0

    def sessions_dir(self, name: str) -> Path:
        """The host's /var/lib/smartwork-vdi/sessions, as seen from outside."""
        return self._fs(self._host(name), SESSIONS_STATE)

    # -- the host's own files ----------------------------------------------------------------------

    def _ensure_host(self, host: LabHost) -> None:
        super()._ensure_host(host)
        if self.desktop_files:
            install_desktop_files(self._fs(host, "etc"))

    def _populate(self, host: LabHost, fs: Path) -> None:
        (fs / "tmp").chmod(0o1777)
        (fs / "home").chmod(0o755)
        etc = fs / "etc"
        shutil.copytree("/etc", etc, symlinks=True, dirs_exist_ok=True)
        etc.chmod(0o755)
        for name, line in (("passwd", passwd_line), ("group", group_line), ("shadow", shadow_line)):
            target = etc / name
            known = {entry.split(":", 1)[0] for entry in target.read_text().splitlines()}
            with target.open("a") as stream:
                stream.writelines(line(user) for user in self.users if user.uid not in known)

    def _mount_more(self, enter: list[str]) -> None:
        # `ip netns exec` gives the host a sysfs of its own, without the machine's cgroup mounts under
        # /sys/fs/cgroup; the provider puts each session in cgroups there, so mount the same hierarchies.
        for kind, target, options in cgroup_mounts():
            if kind == "tmpfs":
                _run([*enter, "mount", "-t", "tmpfs", "-o", options, "cgroup-root", target])
            else:
                _run([*enter, "mkdir", "-p", target])
                _run([*enter, "mount", "-t", kind, "-o", options, kind, target])

    # -- removal -----------------------------------------------------------------------------------

    def _remove_host(self, host: LabHost) -> None:
        super()._remove_host(host)  # every process of the host is gone now
        for session in self._fs(host, SESSIONS_STATE).glob("*/session"):
            for cgroup in _cgroups_of(session):
                with contextlib.suppress(OSError):
                    Path(cgroup).rmdir()


def install_desktop_files(etc: Path) -> None:
    """The role's desktop files into a host's /etc (as seen from outside), when missing or changed."""
    for source, target, mode in DESKTOP_FILES:
        path = etc / target
        content = (ROLE_FILES / source).read_bytes()
        if not path.exists() or path.read_bytes() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(".new").write_bytes(content)
            path.with_suffix(".new").chmod(mode)
            path.with_suffix(".new").replace(path)


def cgroup_mounts() -> list[tuple[str, str, str]]:
    """(type, mount point, options) of the machine's cgroup file systems: cgroup2 alone at /sys/fs/cgroup,
    or a tmpfs there holding v1 hierarchies and a cgroup2 one (a "hybrid" machine like this lab's)."""
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _source, target, kind, options = line.split()[:4]
        if (target == CGROUP_ROOT and kind in ("tmpfs", "cgroup2")) or (
            target.startswith(CGROUP_ROOT + "/") and kind in ("cgroup", "cgroup2")
        ):
            found.append((kind, target, options))
    return found


def _cgroups_of(session_file: Path) -> list[str]:
    for line in session_file.read_text().splitlines():
        if line.startswith("cgroups="):
            return line.split("=", 1)[1].strip("'").split()
    return []
