"""The whole smartwork_hypervisor role, applied for real over SSH to a lab host that has no libvirt running.

hv4 (10.77.0.14) is a namespace host of its own (`LabHosts(..., libvirt=False)`): sshd only, with private,
empty /etc/libvirt, /run/libvirt, /var/lib/libvirt and /var/log. Ansible logs in as root with the lab's
client key and checks hv4's host key; the role finds the packages installed (the host shares the machine's
/usr), starts virtlogd and libvirtd itself (no systemd), defines the storage pool and makes the gateway's
account. The gateway's SSH channel then logs in as that account and reaches a desktop's VNC on hv4's
loopback. The account is machine-wide (/etc/passwd is shared): a unique name, removed at teardown.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import GatewaySettings
from gateway.ssh_channel import SshChannels, SshRouteError
from hypervisor.base import BootImage, DesktopSpec
from hypervisor.config import SshAddress
from hypervisor.libvirt_provider import LibvirtProvider
from images.demo import DemoImage
from monitoring.metrics import SshChannelResult
from tests.fixtures.ansible import ANSIBLE_DIR, apply_playbook, assert_gateway_account, lab_host_inventory
from tests.fixtures.lab_hosts import POOLS_DIR, lab_host_settings, own_lab_host
from tests.fixtures.libvirt import destroy_quietly
from tests.fixtures.sshd import generate_key
from vdi.lab.hosts import ROOT_ADDRESS, LabHosts, LabHostsError

PLAYBOOK = str(ANSIBLE_DIR / "playbooks" / "hypervisor.yml")
HOST = "hv4"
HOST_OCTET = 14
RFB_BANNER = b"RFB 003.008\n"


@dataclass
class RoleOnLabHost:
    hosts: LabHosts
    pool: str
    user: str
    gateway_key: Path
    libvirt_answered_before: bool
    first: dict[str, int]
    second: dict[str, int]

    @property
    def address(self) -> str:
        return self.hosts.address(HOST)

    def virsh(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["virsh", "-c", self.hosts.uri(HOST), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def on_host(self, *argv: str) -> subprocess.CompletedProcess:
        return self.hosts.run(HOST, argv)


@pytest.fixture(scope="module")
def role_on_hv4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoleOnLabHost]:
    work = tmp_path_factory.mktemp("role-on-hv4")
    token = secrets.token_hex(3)
    pool, user = f"swrole-{token}", f"swgw{token}"
    hosts = LabHosts(work / "lab", names=[HOST], first_octet=HOST_OCTET, libvirt=False)
    with own_lab_host(HOST):
        try:
            try:
                hosts.up()
            except LabHostsError as exc:
                pytest.fail(f"cannot bring lab host {HOST} up: {exc}")
            gateway_key = generate_key(work / "gateway_key", "smartwork-gw@test")
            variables = {
                "smartwork_hypervisor_storage_pool": pool,
                "smartwork_hypervisor_storage_path": f"{POOLS_DIR}/{pool}",  # hv4's own /var/lib/smartwork-vdi
                "smartwork_hypervisor_gateway_user": user,
                "smartwork_hypervisor_gateway_home": f"/home/{user}",
                "smartwork_hypervisor_gateway_public_key": (work / "gateway_key.pub").read_text().strip(),
            }
            answered_before = hosts.healthy(HOST)
            inventory_file = lab_host_inventory(hosts, HOST, "hypervisors", work / "inventory.yml")
            first = apply_playbook(inventory_file, PLAYBOOK, variables)
            second = apply_playbook(inventory_file, PLAYBOOK, variables)
            yield RoleOnLabHost(hosts, pool, user, gateway_key, answered_before, first, second)
        finally:
            hosts.down()  # stops the role's libvirtd and every login with the host
            subprocess.run(["userdel", "-r", user], capture_output=True, check=False)


def test_role_starts_libvirt_makes_the_pool_and_the_gateway_account_and_is_idempotent(role_on_hv4):
    run = role_on_hv4

    assert not run.libvirt_answered_before
    assert run.first["failed"] == 0 and run.first["changed"] > 0
    assert run.second["failed"] == 0 and run.second["changed"] == 0
    # The role's daemons, with pid files in hv4's own /run/libvirt.
    assert f"{HOST} {run.address}: virtlogd running, libvirtd running, sshd running" in run.hosts.status()
    assert run.virsh("hostname").stdout.strip() == HOST
    info = run.virsh("pool-info", run.pool)
    assert info.returncode == 0, info.stderr
    assert "State:          running" in info.stdout and "Autostart:      yes" in info.stdout
    assert f"<path>{POOLS_DIR}/{run.pool}</path>" in run.virsh("pool-dumpxml", run.pool).stdout
    assert_gateway_account(run.on_host, run.user, run.gateway_key)


def test_gateway_account_gets_no_command(role_on_hv4):
    run = role_on_hv4
    result = subprocess.run(
        [
            "ssh",
            "-F",
            str(run.hosts.ssh_config),
            "-i",
            str(run.gateway_key),
            "-l",
            run.user,
            run.address,
            "id",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "uid=" not in result.stdout


def test_gateway_reaches_a_desktop_on_hv4_as_the_role_made_account(role_on_hv4, demo_image: DemoImage):
    run = role_on_hv4
    driver = LibvirtProvider(lab_host_settings(run.hosts, HOST, run.pool))
    name = f"{run.pool}-desktop"
    settings = GatewaySettings(ssh_key_file=run.gateway_key, ssh_known_hosts=run.hosts.known_hosts)
    address = SshAddress(run.user, run.address, 22)

    async def banner(port: int) -> bytes:
        channels = SshChannels(settings)
        try:
            stream = await channels.open_stream(address, "127.0.0.1", port, HOST)
            try:
                return await stream.read_bytes(len(RFB_BANNER))
            finally:
                stream.close()
        finally:
            await channels.close()

    async def refused(host: str, port: int) -> SshRouteError:
        channels = SshChannels(settings)
        try:
            with pytest.raises(SshRouteError) as caught:
                await channels.open_stream(address, host, port, HOST)
            return caught.value
        finally:
            await channels.close()

    try:
        endpoint = driver.create_desktop(DesktopSpec(domain_name=name, image=BootImage.of(demo_image)))
        assert endpoint.host == "127.0.0.1"
        assert asyncio.run(banner(endpoint.port)) == RFB_BANNER
        # permitopen: the account forwards to hv4's loopback only, not to other machines on its network,
        # even to a port that listens there.
        with socket.create_server((ROOT_ADDRESS, 0)) as elsewhere:
            error = asyncio.run(refused(ROOT_ADDRESS, elsewhere.getsockname()[1]))
        assert error.result is SshChannelResult.CHANNEL_REFUSED
        assert "prohibited" in str(error).lower()
    finally:
        destroy_quietly(driver, name)
        driver.close()
