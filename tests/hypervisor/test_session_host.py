"""The session-host provider against the lab's real session hosts (sshd, Xvnc, local accounts of the demo users).

Each session here is a real TigerVNC Xvnc with openbox and xterm, started over SSH as the user's own account.
The display is reached the way the gateway reaches it: a direct-tcpip channel through the host's sshd to its
loopback, authenticated with the session's VNC password.
"""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import paramiko
import pytest

from hypervisor.base import DesktopSpec, HostUnreachable, HypervisorError
from hypervisor.config import HostSettings, SshAddress
from hypervisor.registry import provider_class
from hypervisor.session_host import SessionHostProvider
from hypervisor.ssh_host import SshHost
from tests.fixtures.common import wait_until
from tests.fixtures.session_hosts import (
    session_host_provider,
    session_pids,
    session_spec,
    still_running,
    vnc_login,
)

HOST = "sh1"
KIMMJ_UID = 20001  # demo.ldif's uidNumber of kimmj


@pytest.fixture
def provider(lab_session_hosts):
    provider = session_host_provider(lab_session_hosts, HOST)
    made: list[str] = []
    original = provider.create_desktop

    def create(spec: DesktopSpec):
        made.append(spec.domain_name)
        return original(spec)

    provider.create_desktop = create  # every session a test starts is destroyed after it
    yield provider
    for name in made:
        provider.destroy_desktop(name)
    provider.close()


def gateway_channel(hosts, port: int) -> tuple[SshHost, paramiko.Channel]:
    """A channel to the host's 127.0.0.1:port through its sshd, as the gateway opens it."""
    ssh = SshHost(HOST, SshAddress("root", hosts.address(HOST), 22), hosts.client_key, hosts.known_hosts)
    return ssh, ssh.open_channel("127.0.0.1", port)


def login(hosts, port: int, password: str):
    ssh, channel = gateway_channel(hosts, port)
    try:
        return vnc_login(channel, password)
    finally:
        channel.close()
        ssh.close()


def session_limits(hosts, session: str) -> dict[str, str]:
    """The CPU quota (µs per 100 ms) and memory limit (bytes) the host holds for the session."""
    script = textwrap.dedent("""
        for cg in $(. /var/lib/smartwork-vdi/sessions/"$1"/session && echo "$cgroups"); do
          [ -f "$cg/cpu.max" ] && echo "cpu $(cut -d' ' -f1 "$cg/cpu.max")" && echo "memory $(cat "$cg/memory.max")"
          [ -f "$cg/cpu.cfs_quota_us" ] && echo "cpu $(cat "$cg/cpu.cfs_quota_us")"
          [ -f "$cg/memory.limit_in_bytes" ] && echo "memory $(cat "$cg/memory.limit_in_bytes")"
        done; true
    """)
    listed = hosts.run(HOST, ["sh", "-c", script, "sh", session]).stdout
    return dict(line.split() for line in listed.splitlines())


def as_user(user: str, *argv: str) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--reset-env", *argv]


def test_the_provider_is_registered_without_images():
    cls = provider_class("session-host")
    assert cls is SessionHostProvider and cls.needs_image is False and cls.runs_sessions is True
    cls.check_uri("ssh://root@10.0.0.5")
    cls.check_uri("ssh://vdi@sh1.example:2222?keyfile=/etc/k&known_hosts=/etc/kh")
    with pytest.raises(ValueError, match="not allowed"):
        cls.check_uri("ssh://root@10.0.0.5?command=/bin/sh")
    with pytest.raises(ValueError, match="expected ssh://"):
        cls.check_uri("qemu+ssh://root@10.0.0.5/system")
    with pytest.raises(ValueError, match="without parameters"):
        cls.check_added_uri("ssh://root@10.0.0.5?keyfile=/root/.ssh/id_ed25519")


def test_a_session_runs_as_its_user_on_loopback_behind_its_own_password(lab_session_hosts, provider):
    spec = session_spec("kimmj", label="mois-desktop / kimmj", cpu_limit=1.0, memory_limit_mib=512)
    endpoint = provider.create_desktop(spec)

    assert endpoint.host == "127.0.0.1" and 5910 <= endpoint.port < 6500
    assert provider.desktop_state(spec.domain_name) == "running"
    assert provider.readiness(spec.domain_name).ready
    pids = session_pids(lab_session_hosts, HOST, spec.domain_name)
    owners = lab_session_hosts.run(HOST, ["ps", "-o", "uid=,comm=", "-p", ",".join(map(str, pids))]).stdout
    assert {line.split()[1] for line in owners.splitlines()} >= {"Xvnc", "openbox", "xterm"}
    assert {int(line.split()[0]) for line in owners.splitlines()} == {KIMMJ_UID}
    # The pool's limits are the session's cgroups' (cgroup v1 cpu and memory on this machine, cpu.max and
    # memory.max on a cgroup v2 host).
    assert session_limits(lab_session_hosts, spec.domain_name) == {"cpu": "100000", "memory": str(512 << 20)}
    # The password travels on stdin only: no command line on the host shows it.
    assert spec.vnc_password not in lab_session_hosts.run(HOST, ["ps", "-eo", "args"]).stdout

    good = login(lab_session_hosts, endpoint.port, spec.vnc_password)
    assert good.security_types == [2] and good.accepted and good.desktop_name == "mois-desktop / kimmj"
    assert not login(lab_session_hosts, endpoint.port, "wrong123").accepted
    with socket.socket() as outside:  # the display is not on the host's network address
        assert outside.connect_ex((lab_session_hosts.address(HOST), endpoint.port)) != 0

    # Another provider (a restarted broker) finds the session by its state on the host.
    again = session_host_provider(lab_session_hosts, HOST)
    assert spec.domain_name in again.list_desktops()
    assert again.display(spec.domain_name) == endpoint
    again.close()

    provider.destroy_desktop(spec.domain_name)
    assert still_running(lab_session_hosts, HOST, pids) == []
    assert provider.desktop_state(spec.domain_name) == "missing"
    assert not (lab_session_hosts.sessions_dir(HOST) / spec.domain_name).exists()
    provider.destroy_desktop(spec.domain_name)  # idempotent


def test_two_users_on_one_host_cannot_reach_each_other(lab_session_hosts, provider):
    kim, lee = session_spec("kimmj"), session_spec("leesy")
    kim_display, lee_display = provider.create_desktop(kim), provider.create_desktop(lee)
    run = lab_session_hosts.run
    assert run(HOST, as_user("kimmj", "sh", "-c", "echo 비밀 > ~/note.txt")).returncode == 0
    kim_dir = f"/var/lib/smartwork-vdi/sessions/{kim.domain_name}"

    # Files: the home and the session's password and cookie are kimmj's alone.
    for path in ("/home/kimmj/note.txt", f"{kim_dir}/passwd", f"{kim_dir}/xauth"):
        refused = run(HOST, as_user("leesy", "cat", path))
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, path
    # Processes: leesy cannot signal kimmj's session.
    xvnc = session_pids(lab_session_hosts, HOST, kim.domain_name)[0]
    refused = run(HOST, as_user("leesy", "kill", "-0", str(xvnc)))
    assert refused.returncode != 0 and "not permitted" in refused.stderr.lower()
    # Displays: leesy's password does not open kimmj's display, nor does an X client without kimmj's cookie.
    assert not login(lab_session_hosts, kim_display.port, lee.vnc_password).accepted
    assert login(lab_session_hosts, lee_display.port, lee.vnc_password).accepted
    x_socket = f"/tmp/.X11-unix/X{kim_display.port - 5900}"
    assert run(HOST, as_user("leesy", "python3", "-c", X11_SETUP, x_socket)).stdout.strip() == "refused"

    # The home outlives the session: kimmj's next session on this host finds the file.
    provider.destroy_desktop(kim.domain_name)
    provider.create_desktop(session_spec("kimmj"))
    assert run(HOST, as_user("kimmj", "cat", "/home/kimmj/note.txt")).stdout == "비밀\n"


# X11 connection setup without authorization (X Window System Protocol, "Connection Setup"): the first byte of
# the reply is 0 when the server refuses.
X11_SETUP = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(struct.pack("<cxHHHHxx", b"l", 11, 0, 0, 0))
    print("refused" if s.recv(1) == b"\\0" else "accepted")
""")


def test_an_unknown_user_is_refused_and_nothing_is_left(lab_session_hosts, provider):
    before = provider.list_desktops()
    spec = session_spec("nosuchuser")
    with pytest.raises(HypervisorError, match=r"host sh1: has no account nosuchuser"):
        provider.create_desktop(spec)
    assert provider.list_desktops() == before
    assert not (lab_session_hosts.sessions_dir(HOST) / spec.domain_name).exists()


def test_an_account_whose_home_is_not_a_plain_path_is_refused(lab_session_hosts, provider):
    # The session's state file is sourced by root later: an odd home must never get into it.
    user, run = "oddhome", lab_session_hosts.run
    assert run(HOST, ["useradd", "--no-create-home", "--home-dir", "/home/o'x;id", user]).returncode == 0
    try:
        spec = session_spec(user)
        with pytest.raises(HypervisorError, match=f"host sh1: has an account {user} whose home"):
            provider.create_desktop(spec)
        assert not (lab_session_hosts.sessions_dir(HOST) / spec.domain_name).exists()
    finally:
        run(HOST, ["userdel", user])


def test_an_application_that_cannot_start_leaves_nothing(lab_session_hosts, provider):
    before = provider.list_desktops()
    spec = session_spec("kimmj", kind="app", command=("no-such-editor", "--full-screen"), window_manager=())
    with pytest.raises(HypervisorError, match=r"host sh1: session .*: kimmj cannot run 'no-such-editor'"):
        provider.create_desktop(spec)
    assert provider.list_desktops() == before
    assert not (lab_session_hosts.sessions_dir(HOST) / spec.domain_name).exists()


def test_an_application_that_exits_ends_its_session(lab_session_hosts, provider):
    spec = session_spec("leesy", kind="app", command=("sleep", "600"), window_manager=())
    provider.create_desktop(spec)
    assert provider.readiness(spec.domain_name).ready
    app = lab_session_hosts.sessions_dir(HOST) / spec.domain_name / "app.pid"
    assert lab_session_hosts.run(HOST, ["kill", app.read_text().strip()]).returncode == 0

    wait_until(lambda: provider.desktop_state(spec.domain_name) == "shutoff", 10, "the session to end")
    assert provider.readiness(spec.domain_name).crashed == "the application exited"


def test_a_session_without_a_vnc_password_is_refused(provider):
    spec = session_spec("kimmj", vnc_password=None)
    with pytest.raises(HypervisorError, match="no VNC password"):
        provider.create_desktop(spec)


def test_a_host_without_xvnc_is_refused(lab_session_hosts):
    host, hidden = "sh2", "/tmp/not-xvnc"  # the host's own /tmp
    # An empty file that is not executable over Xvnc, in sh2's mount namespace only: the shell's command
    # lookup passes it by, as if the package were not installed.
    assert lab_session_hosts.run(host, ["touch", hidden]).returncode == 0
    assert lab_session_hosts.run(host, ["mount", "--bind", hidden, "/usr/bin/Xvnc"]).returncode == 0
    provider = session_host_provider(lab_session_hosts, host)
    try:
        with pytest.raises(HypervisorError, match="host sh2: has no Xvnc"):
            provider.create_desktop(session_spec("kimmj"))
        with pytest.raises(HypervisorError, match="host sh2: has no Xvnc"):
            provider.probe()
        assert provider.list_desktops() == []
    finally:
        lab_session_hosts.run(host, ["umount", "/usr/bin/Xvnc"])
        provider.close()


def test_host_stats_come_from_the_host(lab_session_hosts, provider):
    first, second = provider.host_stats(), provider.host_stats()
    assert first.cpus and first.cpus >= 1 and first.memory_mib and first.free_memory_mib > 0
    assert first.cpu_load is None and second.cpu_load is not None and 0 <= second.cpu_load <= 1
    assert "session host" in provider.probe()


def test_one_ssh_connection_serves_every_call(lab_session_hosts, provider):
    provider.list_desktops()
    transport = provider.ssh.transport()
    provider.host_stats()
    provider.list_desktops()
    assert provider.ssh.transport() is transport


def test_unknown_and_mismatched_host_keys_are_refused(lab_session_hosts, tmp_path):
    address = lab_session_hosts.address(HOST)
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    wrong = tmp_path / "wrong_known_hosts"
    other = paramiko.Ed25519Key.from_private_key_file(str(lab_session_hosts.client_key))
    wrong.write_text(f"{address} {other.get_name()} {other.get_base64()}\n")
    for known, reason in ((empty, "is unknown"), (wrong, "does not match")):
        uri = f"ssh://root@{address}?keyfile={lab_session_hosts.client_key}&known_hosts={known}"
        provider = SessionHostProvider(HostSettings(name=HOST, provider="session-host", uri=uri))
        with pytest.raises(HostUnreachable, match=f"host sh1: host key of {address} {reason}"):
            provider.list_desktops()
        provider.close()
    assert Path(lab_session_hosts.known_hosts).read_text().startswith("10.77.0.")
