"""A desktop on a remote host whose VNC listens on the host's loopback only, shown through the gateway's SSH channel.

The only hypervisor host is the lab's hv1 (its own network namespace, sshd and libvirtd), reached by the
broker over qemu+ssh://. Its console route defaults to "ssh": the gateway logs in to hv1's sshd with the
lab's key, checks hv1's host key against the lab's known_hosts, and opens a direct-tcpip channel to the
desktop's VNC port on hv1's 127.0.0.1. A headless Chromium signs in, connects, and noVNC shows the desktop.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.config import DatabaseSettings
from broker.db.models import Desktop
from hypervisor.config import HostSettings
from hypervisor.libvirt_provider import LibvirtProvider
from tests.fixtures.common import ROOT, free_port
from tests.fixtures.e2e import Stack, vdi_process, write_config
from tests.fixtures.lab_hosts import lab_host_settings
from tests.fixtures.libvirt import destroy_quietly
from tests.fixtures.portal import (
    domain_exists,
    open_console,
    session_state,
    sign_in,
    user_in,
    wait_connected_and_painted,
)

pytestmark = pytest.mark.e2e


def gateway_metric(port: int, sample: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
    return 0.0


def destroy_desktops(database_url: str, host: HostSettings) -> None:
    """Whatever the test left on hv1 (a failed run may not have logged off)."""
    database = Database(DatabaseSettings(url=database_url))
    try:
        with database.transaction() as session:
            domains = session.scalars(select(Desktop.domain_name)).all()
    finally:
        database.close()
    driver = LibvirtProvider(host)
    try:
        for domain in domains:
            destroy_quietly(driver, domain)
    finally:
        driver.close()


@pytest.fixture
def remote_stack(
    tmp_path, slapd, ldap_settings, lab_hosts, lab_pool, demo_image
) -> Iterator[tuple[Stack, int]]:
    """Broker and gateway processes whose only host is hv1 over qemu+ssh; yields the stack and gateway port."""
    host = lab_host_settings(lab_hosts, "hv1", lab_pool)
    broker_port, gateway_port = free_port(), free_port()
    config_path = write_config(
        tmp_path / "vdi.toml",
        ldap=ldap_settings,
        host=host,
        broker_port=broker_port,
        gateway_port=gateway_port,
        gateway_url=f"ws://127.0.0.1:{gateway_port}/ws",
    )
    # No console_access in [[hosts]]: a qemu+ssh:// host gets the ssh route by default.
    ssh = f'[gateway]\nssh_key_file = "{lab_hosts.client_key}"\nssh_known_hosts = "{lab_hosts.known_hosts}"\n'
    config_path.write_text(config_path.read_text().replace("[gateway]\n", ssh, 1))
    subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(config_path), "db", "upgrade"], check=True, cwd=ROOT
    )
    with contextlib.ExitStack() as processes:
        processes.callback(destroy_desktops, f"sqlite:///{tmp_path}/vdi.db", host)
        for command, port in (("gateway", gateway_port), ("broker", broker_port)):
            processes.enter_context(
                vdi_process(
                    config_path, [command], f"http://127.0.0.1:{port}/healthz", tmp_path / f"{command}.log"
                )
            )
        stack = Stack(
            config_path, f"http://127.0.0.1:{broker_port}", f"ws://127.0.0.1:{gateway_port}/ws", tmp_path
        )
        yield stack, gateway_port


def test_desktop_on_a_remote_host_shows_through_the_ssh_channel(
    remote_stack, page, demo_users, lab_hosts, lab_pool, artifacts_dir
):
    stack, gateway_port = remote_stack
    host = lab_host_settings(lab_hosts, "hv1", lab_pool)
    sign_in(page, stack.base_url, user_in(demo_users, "mois"))
    open_console(page, stack.base_url, "mois-office")
    session_id = page.url.rsplit("/", 1)[1].split("?")[0]
    domain = session_state(page, stack.base_url, session_id)["desktop"]["name"]
    assert domain_exists(host, domain)

    wait_connected_and_painted(page, host, domain)
    page.screenshot(path=str(artifacts_dir / "e2e-desktop-remote-host-ssh.png"))
    assert page.locator("#console-status").inner_text() == "연결됨"
    assert page.locator("#desktop-name").inner_text() == domain
    gateway_log = (stack.log_dir / "gateway.log").read_text()
    assert f"via ssh root@{lab_hosts.address('hv1')}:22" in gateway_log
    assert gateway_metric(gateway_port, 'vdi_gateway_ssh_channel_opens_total{result="success"}') >= 1

    page.click("#logoff")
    page.wait_for_url(f"{stack.base_url}/desktops")
    assert not domain_exists(host, domain)
