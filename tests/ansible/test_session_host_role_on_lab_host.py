"""The smartwork_session_host role, applied for real over SSH to a fresh lab session host, twice.

sh4 (10.77.0.24) is a session host of its own (`LabSessionHosts(..., names=["sh4"])`): sshd only, with a
private /etc, /home, /tmp and /var/lib/smartwork-vdi. Ansible logs in as root with the lab's client key and
checks sh4's host key; the role finds the packages installed (the host shares the machine's /usr and dpkg
database), makes the session state directory and the gateway's forward-only account (in sh4's own /etc, so
the machine's accounts are untouched). The second run changes nothing. Then the session-host provider starts
a session on sh4 and the gateway's account reaches its display through sshd, and nothing else.

The locale is left alone here (`smartwork_session_host_locale: ""`): locale-gen writes the machine-wide
/usr/lib/locale archive, which a test must not change. The broker's key is not given either: root's
authorized keys live in the machine's /root.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hypervisor.config import SshAddress
from hypervisor.session_host import SessionHostProvider
from hypervisor.ssh_host import ChannelRefused, SshHost
from tests.fixtures.ansible import ANSIBLE_DIR, apply_playbook, assert_gateway_account, lab_host_inventory
from tests.fixtures.common import wait_until
from tests.fixtures.lab_hosts import own_lab_host
from tests.fixtures.session_hosts import session_host_settings, session_spec
from tests.fixtures.sshd import generate_key
from vdi.lab.hosts import ROOT_ADDRESS, LabHostsError
from vdi.lab.session_hosts import DESKTOP_FILES, ROLE_FILES, XSESSION, LabSessionHosts

PLAYBOOK = str(ANSIBLE_DIR / "playbooks" / "session_host.yml")
HOST = "sh4"
HOST_OCTET = 24


@dataclass
class RoleOnLabHost:
    hosts: LabSessionHosts
    user: str
    gateway_key: Path
    first: dict[str, int]
    second: dict[str, int]

    def on_host(self, *argv: str) -> subprocess.CompletedProcess:
        return self.hosts.run(HOST, argv)


@pytest.fixture(scope="module")
def role_on_sh4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleOnLabHost]:
    work = tmp_path_factory.mktemp("role-on-sh4")
    user = f"swgw{secrets.token_hex(3)}"
    hosts = LabSessionHosts(work / "lab", names=[HOST], first_octet=HOST_OCTET, desktop_files=False)
    with own_lab_host(HOST):
        try:
            try:
                hosts.up()
            except LabHostsError as exc:
                pytest.fail(f"cannot bring lab session host {HOST} up: {exc}")
            gateway_key = generate_key(work / "gateway_key", "smartwork-gw@test")
            variables = {
                "smartwork_session_host_locale": "",
                "smartwork_session_host_gateway_user": user,
                "smartwork_session_host_gateway_home": f"/home/{user}",
                "smartwork_session_host_gateway_public_key": (work / "gateway_key.pub").read_text().strip(),
            }
            inventory_file = lab_host_inventory(hosts, HOST, "session_hosts", work / "inventory.yml")
            runs = [apply_playbook(inventory_file, PLAYBOOK, variables) for _ in range(2)]
            yield RoleOnLabHost(hosts, user, gateway_key, *runs)
        finally:
            hosts.down()  # every process and login of sh4 ends; its /etc, /home and accounts go with it


def test_role_makes_the_state_directory_and_the_gateway_account_and_is_idempotent(role_on_sh4):
    run = role_on_sh4
    assert run.first["failed"] == 0 and run.first["changed"] > 0
    assert run.second["failed"] == 0 and run.second["changed"] == 0
    assert run.on_host("stat", "-c", "%U %a", "/var/lib/smartwork-vdi/sessions").stdout.split() == [
        "root",
        "711",
    ]
    assert_gateway_account(run.on_host, run.user, run.gateway_key)
    # The account exists on sh4 only.
    assert subprocess.run(["getent", "passwd", run.user], capture_output=True, check=False).returncode != 0


def test_role_installs_the_desktop_session_and_the_panel_layout(role_on_sh4):
    run = role_on_sh4
    for source, target, mode in DESKTOP_FILES:
        path = f"/etc/{target}"
        assert run.on_host("stat", "-c", "%U %a", path).stdout.split() == ["root", f"{mode:o}"]
        assert run.on_host("cat", path).stdout == (ROLE_FILES / source).read_text()
    # A desktop session through the role's script: the panel and the window manager run as the user.
    provider = SessionHostProvider(session_host_settings(run.hosts, HOST))
    spec = session_spec("kimmj", window_manager=(), command=(XSESSION,))
    try:
        provider.create_desktop(spec)
        wait_until(
            lambda: (
                {"xfce4-panel", "xfwm4", "ibus-daemon"}
                <= set(run.on_host("ps", "-o", "comm=", "-u", "kimmj").stdout.split())
            ),
            30,
            "the desktop's programs on sh4",
        )
    finally:
        provider.destroy_desktop(spec.domain_name)
        provider.close()


def test_a_session_on_the_role_made_host_is_reached_by_the_gateway_account_only_there(role_on_sh4):
    run = role_on_sh4
    provider = SessionHostProvider(session_host_settings(run.hosts, HOST))
    spec = session_spec("kimmj")
    gateway = SshHost(
        HOST, SshAddress(run.user, run.hosts.address(HOST), 22), run.gateway_key, run.hosts.known_hosts
    )
    try:
        endpoint = provider.create_desktop(spec)
        channel = gateway.open_channel(endpoint.host, endpoint.port)
        try:
            assert channel.recv(12) == b"RFB 003.008\n"
        finally:
            channel.close()
        # permitopen: the account forwards to sh4's loopback only, and runs no command.
        with pytest.raises(ChannelRefused, match="prohibited"):
            gateway.open_channel(ROOT_ADDRESS, 22).close()
        assert gateway.run(["id"]).stdout == ""
    finally:
        gateway.close()
        provider.destroy_desktop(spec.domain_name)
        provider.close()
