"""The multi-host lab: real libvirt hosts in network namespaces, reached over qemu+ssh like remote machines."""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

from hypervisor.base import BootImage, DesktopSpec
from hypervisor.libvirt_provider import LibvirtProvider
from images.demo import DemoImage
from tests.fixtures.common import ROOT, wait_until
from tests.fixtures.lab_hosts import lab_host_settings, own_lab_host
from tests.fixtures.libvirt import destroy_quietly
from vdi.lab.hosts import ROOT_SHELL_STARTUP, LabHosts

READ_BANNER = (
    "import socket, sys\n"
    "with socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10) as s:\n"
    "    sys.stdout.write(s.recv(12).decode())\n"
)
# A guest without disk or kernel: QEMU starts, SeaBIOS finds nothing to boot and waits; cheap under TCG.
IDLE_GUEST = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>
<os><type arch='x86_64'>hvm</type></os>
<devices><graphics type='vnc' listen='127.0.0.1' autoport='yes'/></devices></domain>"""


def open_host(hosts: LabHosts, name: str) -> libvirt.virConnect:
    return libvirt.open(hosts.uri(name))


def connection_refused(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_three_hosts_answer_over_ssh_each_with_its_own_libvirt(lab_hosts, lab_pool):
    connections = {name: open_host(lab_hosts, name) for name in lab_hosts.names}
    try:
        assert {name: conn.getHostname() for name, conn in connections.items()} == {
            "hv1": "hv1",
            "hv2": "hv2",
            "hv3": "hv3",
        }
        pool = f"{lab_pool}-separate"
        xml = f"<pool type='dir'><name>{pool}</name><target><path>/var/lib/smartwork-vdi/{pool}</path></target></pool>"
        defined = connections["hv1"].storagePoolDefineXML(xml, 0)
        try:
            pools = {
                name: conn.listStoragePools() + conn.listDefinedStoragePools()
                for name, conn in connections.items()
            }
            assert pool in pools["hv1"]
            assert pool not in pools["hv2"] + pools["hv3"]
        finally:
            defined.undefine()
    finally:
        for conn in connections.values():
            conn.close()


def test_hosts_check_each_others_keys_and_refuse_unknown_ones(lab_hosts, tmp_path):
    ok = subprocess.run(
        ["ssh", "-F", str(lab_hosts.ssh_config), lab_hosts.address("hv1"), "hostname"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, "hv1")
    # hv2's key filed under hv1's address: a host presenting another key is refused.
    lines = lab_hosts.known_hosts.read_text().splitlines()
    hv2_key = next(line for line in lines if line.startswith(lab_hosts.address("hv2") + " ")).split(" ", 1)[1]
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"{lab_hosts.address('hv1')} {hv2_key}\n")
    refused = subprocess.run(
        [
            "ssh",
            "-F",
            str(lab_hosts.ssh_config),
            "-o",
            f"UserKnownHostsFile={wrong}",
            lab_hosts.address("hv1"),
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr


def test_ssh_commands_on_a_host_run_none_of_the_machines_root_startup_files(lab_hosts):
    # The machine's /root/.bashrc (pyenv init on this machine class) must not run, nor lock its files, on
    # every SSH command: a lock left by a killed command once made each command on each host wait 60 s.
    present = [path for path in ROOT_SHELL_STARTUP if Path(path).is_file()]
    sizes = 'for f in "$@"; do echo "$f $(wc -c < "$f")"; done'
    result = subprocess.run(
        [
            "ssh",
            "-F",
            str(lab_hosts.ssh_config),
            lab_hosts.address("hv3"),
            shlex.join(["sh", "-c", sizes, "sh", *present]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout.splitlines()) == (0, [f"{path} 0" for path in present])


def test_desktop_on_hv2_has_its_display_on_hv2s_loopback_only(lab_hosts, lab_pool, demo_image: DemoImage):
    driver = LibvirtProvider(lab_host_settings(lab_hosts, "hv2", lab_pool))
    name = f"{lab_pool}-vnc"
    try:
        endpoint = driver.create_desktop(DesktopSpec(domain_name=name, image=BootImage.of(demo_image)))
        assert endpoint.host == "127.0.0.1"
        banner = lab_hosts.run("hv2", [sys.executable, "-c", READ_BANNER, str(endpoint.port)])
        assert (banner.returncode, banner.stdout) == (0, "RFB 003.008\n")
        assert connection_refused(lab_hosts.address("hv2"), endpoint.port)
        for other in ("hv1", "hv3"):
            conn = open_host(lab_hosts, other)
            try:
                assert name not in [domain.name() for domain in conn.listAllDomains(0)]
            finally:
                conn.close()
    finally:
        destroy_quietly(driver, name)
        driver.close()


def test_cli_status_names_each_host_with_its_address_and_uri(lab_hosts, lab_session_hosts, tmp_path):
    demo = (ROOT / "etc" / "demo.toml").read_text()
    config = tmp_path / "vdi.toml"
    config.write_text(re.sub(r'(?m)^state_dir = ".*"$', f'state_dir = "{lab_hosts.state_dir.parent}"', demo))
    result = subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(config), "lab", "hosts", "status"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in lab_hosts.names:
        assert (
            f"{name} {lab_hosts.address(name)}: virtlogd running, libvirtd running, sshd running"
            in result.stdout
        )
        assert f"answers at {lab_hosts.uri(name)}" in result.stdout
    for name in lab_session_hosts.names:  # the session hosts, sshd only
        assert f"{name} {lab_session_hosts.address(name)}: sshd running" in result.stdout
        assert f"answers at {lab_session_hosts.uri(name)}" in result.stdout
    assert f"known hosts {lab_hosts.known_hosts}" in result.stdout


@pytest.fixture
def throwaway_host(tmp_path: Path):
    """A one-host lab of its own (beside the session's), so a test can take it down."""
    hosts = LabHosts(tmp_path / "lab", names=["hvx"], first_octet=250)
    with own_lab_host("hvx"):
        yield hosts
        hosts.down()


def namespace_pids(namespace: str) -> list[int]:
    listed = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=False)
    return [int(pid) for pid in listed.stdout.split()]


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def remote_sleep_running(namespace: str) -> bool:
    for pid in namespace_pids(namespace):
        try:
            if b"4242" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_down_destroys_guests_and_leaves_no_namespace_link_or_process(throwaway_host, lab_hosts):
    throwaway_host.up()
    throwaway_host.up()  # idempotent: a second up keeps the running host
    conn = open_host(throwaway_host, "hvx")
    try:
        conn.createXML(IDLE_GUEST.format(name="idle"), 0)
    finally:
        conn.close()
    host = throwaway_host.hosts["hvx"]
    pids = namespace_pids(host.namespace)
    commands = {command(pid) for pid in pids}  # sshd's session processes may be exiting meanwhile
    assert {"sleep", "virtlogd", "libvirtd", "sshd"} <= commands
    assert any(command.startswith("qemu") for command in commands)
    # An SSH client left connected (as libvirt's qemu+ssh leaves one when a connection is never closed).
    ssh = ["ssh", "-F", str(throwaway_host.ssh_config), "-i", str(throwaway_host.client_key), "-T"]
    client = subprocess.Popen(
        [*ssh, "-l", "root", "--", throwaway_host.address("hvx"), "sleep", "4242"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: remote_sleep_running(host.namespace), 30, "the SSH client's command on the host")

        throwaway_host.down()

        assert client.wait(timeout=10) is not None  # ended with the hosts, not left waiting on a gone host
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert [pid for pid in pids if alive(pid)] == []
    assert not Path(f"/run/netns/{host.namespace}").exists()
    assert not Path(f"/sys/class/net/{host.link}").exists()
    assert lab_hosts.healthy()  # the session's hosts share the bridge and are still there
