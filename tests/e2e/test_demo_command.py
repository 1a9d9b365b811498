"""`vdi demo` starts the lab, broker and gateway, prints the logins, and Ctrl-C stops what it started."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from tests.fixtures.common import free_port, wait_until
from tests.fixtures.e2e import ROOT, http_ok, port_open, write_config


def read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def test_demo_starts_everything_and_ctrl_c_stops_it(tmp_path, ldap_settings, libvirt_host, demo_image):
    broker_port, gateway_port, ldap_port = free_port(), free_port(), free_port()
    config = write_config(
        tmp_path / "vdi.toml",
        ldap=ldap_settings.model_copy(update={"url": f"ldap://127.0.0.1:{ldap_port}"}),
        host=libvirt_host,
        broker_port=broker_port,
        gateway_port=gateway_port,
        gateway_url=f"ws://127.0.0.1:{gateway_port}/ws",
    )
    with config.open("a") as extra:
        extra.write(f'\n[lab]\nstate_dir = "{tmp_path}/lab"\nldap_port = {ldap_port}\n')

    demo = subprocess.Popen(
        [sys.executable, "-m", "vdi.cli", "--config", str(config), "demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=read_lines, args=(demo.stdout, lines), daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("Stop with Ctrl-C" in line for line in lines), 120, "the demo banner")
        output = "".join(lines)
        assert f"http://127.0.0.1:{broker_port}/" in output
        assert "kimmj" in output and "demo1234!" in output
        assert http_ok(f"http://127.0.0.1:{broker_port}/healthz")
        assert http_ok(f"http://127.0.0.1:{gateway_port}/healthz")
        assert port_open(ldap_port)
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=60)
        reader.join(timeout=10)

    assert demo.returncode == 0
    assert "demo stopped" in "".join(lines)
    assert not port_open(broker_port)
    assert not port_open(gateway_port)
    assert not port_open(ldap_port)


def test_lab_start_status_stop(tmp_path, ldap_settings, libvirt_host, libvirtd):
    ldap_port = free_port()
    config = write_config(
        tmp_path / "vdi.toml",
        ldap=ldap_settings,
        host=libvirt_host,
        broker_port=free_port(),
        gateway_port=free_port(),
        gateway_url="ws://127.0.0.1:1/ws",
    )
    with config.open("a") as extra:
        extra.write(f'\n[lab]\nstate_dir = "{tmp_path}/lab"\nldap_port = {ldap_port}\n')

    def lab(action: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "vdi.cli", "--config", str(config), "lab", action]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert lab("status").returncode == 3  # nothing started yet
    started = lab("start")
    assert started.returncode == 0, started.stderr
    assert port_open(ldap_port)
    status = lab("status")
    assert status.returncode == 0 and str(ldap_port) in status.stdout
    assert lab("start").returncode == 0  # idempotent
    assert lab("stop").returncode == 0
    assert not port_open(ldap_port)
    assert lab("status").returncode == 3
