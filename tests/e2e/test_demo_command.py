"""`vdi demo` starts the lab, broker and gateway over HTTPS, prints the logins, restarts a killed broker, and
`make stop` (`vdi demo --stop`) stops what it started."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.request import HTTPCookieProcessor, HTTPSHandler, build_opener

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from tests.fixtures.broker import BrokerClient, _NoRedirect
from tests.fixtures.common import ROOT, free_port, wait_until
from tests.fixtures.e2e import port_open, write_config
from tests.fixtures.lab_hosts import own_lab_host
from tests.fixtures.portal import open_console, sign_in
from vdi.config import load_config
from vdi.demo_tls import P12_PASSWORD, DemoTls
from vdi.lab.slapd import DEMO_PASSWORD

DEMO_SESSION_HOST = "dt41"
SBC_POOL = """
[[pools]]
name = "mois-sbc"
display_name = "행정안전부 SBC 데스크톱"
groups = ["mois"]
kind = "session"
window_manager = ["openbox"]
session_command = ["xterm"]
"""


def read_lines(stream, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def https_ok(url: str, context: ssl.SSLContext) -> bool:
    with urllib.request.urlopen(url, timeout=5, context=context) as response:
        return response.status == 200


class DemoClient(BrokerClient):
    """A browser that trusts the demo CA and, given a PKCS#12 file the demo printed, presents it."""

    def __init__(self, base_url: str, tls: DemoTls, p12: Path | None = None, scratch: Path | None = None):
        super().__init__(base_url)
        context = tls.client_context()
        if p12 is not None:
            key, cert, _chain = pkcs12.load_key_and_certificates(p12.read_bytes(), P12_PASSWORD.encode())
            pem = scratch / f"{p12.stem}-from-p12.pem"
            pem.write_bytes(
                cert.public_bytes(serialization.Encoding.PEM)
                + key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            context.load_cert_chain(pem)
        self._opener = build_opener(HTTPCookieProcessor(self.jar), _NoRedirect, HTTPSHandler(context=context))


def check_https_demo(
    tmp_path: Path, config_file: Path, output: str, broker_port: int, gateway_port: int
) -> None:
    """The portal and gateway answer over TLS with the demo CA; certificate and password logins work."""
    tls = DemoTls(tmp_path / "lab" / "demo-pki")
    base = f"https://127.0.0.1:{broker_port}"
    assert f"{base}/" in output
    assert str(tls.ca_file) in output and str(tls.p12("choijw")) in output and P12_PASSWORD in output
    assert https_ok(f"{base}/healthz", tls.client_context())
    assert https_ok(f"https://127.0.0.1:{gateway_port}/healthz", tls.client_context())

    by_certificate = DemoClient(base, tls, tls.p12("choijw"), tmp_path)
    answer = by_certificate.post("/api/v1/login/certificate")
    assert answer.status == 200, answer.text
    assert answer.json()["user"]["username"] == "choijw"
    page = by_certificate.get("/desktops")
    assert page.status == 200
    # The console's WebSocket goes to wss://, so an https page is allowed to open it (no mixed content).
    assert f"wss://127.0.0.1:{gateway_port}" in page.headers["Content-Security-Policy"]

    by_password = DemoClient(base, tls)  # no certificate: still welcome
    assert by_password.login("leesy", DEMO_PASSWORD).status == 200

    db = Database(load_config(config_file).database)
    try:
        with db.transaction() as s:
            row = s.scalars(select(AuditEvent).where(AuditEvent.actor == "choijw")).one()
            assert (row.result, row.detail["method"]) == ("success", "certificate")
    finally:
        db.close()


def browser_signs_in_with_the_p12_and_opens_a_console(browser, tls: DemoTls, base: str) -> None:
    """Chromium with the PKCS#12 file the banner names: certificate login, then the noVNC page over wss://."""
    context = browser.new_context(
        locale="ko-KR",
        ignore_https_errors=True,  # the demo CA is not in this fresh profile; mixed content is still blocked
        client_certificates=[{"origin": base, "pfxPath": str(tls.p12("kimmj")), "passphrase": P12_PASSWORD}],
    )
    try:
        page = context.new_page()
        page.goto(f"{base}/login")
        page.get_by_role("link", name="인증서로 로그인").click()
        page.get_by_role("button", name="인증서로 로그인").click()
        page.wait_for_url(f"{base}/desktops")
        assert "김민준" in page.content()
        page.click("li[data-pool='mois-office'] button.connect")
        page.wait_for_url(f"{base}/console/*")
        page.locator("#console-status[data-state=connected]").wait_for(timeout=60_000)
    finally:
        context.close()


def sbc_desktop_over_wss(browser, base: str) -> None:
    """The demo's SBC pool next to the VM pools: a session on the demo's session host, shown over wss://."""
    context = browser.new_context(locale="ko-KR", ignore_https_errors=True)
    try:
        page = context.new_page()
        sign_in(page, base, SimpleNamespace(uid="kimmj", password=DEMO_PASSWORD))
        page.wait_for_url(f"{base}/desktops")
        assert page.locator("li[data-pool='mois-office']").count() == 1
        open_console(page, base, "mois-sbc")
        page.locator("#console-status[data-state=connected]").wait_for(timeout=60_000)
        assert page.locator("#desktop-name").inner_text().startswith("vdi-mois-sbc-kimmj")
    finally:
        context.close()


def console_over_wss(https_config: Path) -> None:
    """A desktop's first frame through the gateway's wss:// endpoint, as the README's benchmark takes it."""
    command = [sys.executable, "-m", "vdi.cli", "--config", str(https_config), "bench", "time-to-desktop"]
    command += ["--runs", "1", "--prewarmed-pool", "", "--cold-pool", "mois-office"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["broker"].startswith("https://") and report["cold"]["runs"] == 1


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie (exited, not yet reaped by the demo) is not running.
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}/status").exists() else ""
    return "State:\tZ" not in status


def broker_restarts_after_sigkill(
    state_dir: Path, tls: DemoTls, broker_port: int, lines: list[str]
) -> list[int]:
    """SIGKILL the demo's broker: the demo logs it and starts a new one, the gateway keeps its pid.

    Returns the broker pids seen (old and new), for the caller to check none outlives the demo.
    """
    read = lambda service: int((state_dir / f"demo-{service}.pid").read_text())  # noqa: E731
    old_broker, gateway = read("broker"), read("gateway")
    os.kill(old_broker, signal.SIGKILL)

    def new_broker_healthy() -> bool:
        try:
            return read("broker") != old_broker and https_ok(
                f"https://127.0.0.1:{broker_port}/healthz", tls.client_context()
            )
        except (OSError, ValueError):
            return False

    # The first restart comes after a 1 s backoff; a broker's start (schema check, LDAP, hosts) takes a while.
    wait_until(new_broker_healthy, 90, "a new demo broker answering /healthz")
    assert read("gateway") == gateway and pid_alive(gateway)
    # The demo logs the restart once it has seen the new broker healthy too: just after the test did.
    wait_until(lambda: "demo broker restarted" in "".join(lines), 30, "the demo's restart log line")
    assert "demo broker exited with status -9; restarting it in 1 s" in "".join(lines)
    return [old_broker, read("broker"), gateway]


def test_demo_starts_everything_and_make_stop_stops_it(
    tmp_path, ldap_settings, libvirt_host, demo_image, browser
):
    broker_port, gateway_port, ldap_port = free_port(), free_port(), free_port()
    config = write_config(
        tmp_path / "vdi.toml",
        ldap=ldap_settings.model_copy(update={"url": f"ldap://127.0.0.1:{ldap_port}"}),
        host=libvirt_host,
        broker_port=broker_port,
        gateway_port=gateway_port,
        gateway_url=f"ws://127.0.0.1:{gateway_port}/ws",
    )
    # No labels: placement keeps the VM pools on the libvirt host and the SBC pool on the session host.
    with config.open("a") as extra:
        extra.write(SBC_POOL)
        extra.write(f'\n[lab]\nstate_dir = "{tmp_path}/lab"\nldap_port = {ldap_port}\n')
        # A session host of the demo's own, named apart from the test lab's sh1 and sh2.
        extra.write(f'session_hosts = ["{DEMO_SESSION_HOST}"]\nsession_host_first_octet = 41\n')

    with own_lab_host(DEMO_SESSION_HOST):
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
            assert "kimmj" in output and "demo1234!" in output
            check_https_demo(tmp_path, config, output, broker_port, gateway_port)
            console_over_wss(tmp_path / "lab" / "demo-https.toml")
            tls = DemoTls(tmp_path / "lab" / "demo-pki")
            browser_signs_in_with_the_p12_and_opens_a_console(
                browser, tls, f"https://127.0.0.1:{broker_port}"
            )
            sbc_desktop_over_wss(browser, f"https://127.0.0.1:{broker_port}")
            assert port_open(ldap_port)
            killed_broker = broker_restarts_after_sigkill(tmp_path / "lab", tls, broker_port, lines)
            # `make stop` from another shell: `vdi demo --stop` asks the running demo to stop (SIGTERM, the same
            # way out as Ctrl-C: tests/vdi/test_demo.py) and waits until it has.
            stopper = subprocess.run(
                [sys.executable, "-m", "vdi.cli", "--config", str(config), "demo", "--stop"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert stopper.returncode == 0, stopper.stdout + stopper.stderr
            assert "demo stopped" in stopper.stdout
        finally:
            if demo.poll() is None:
                demo.send_signal(signal.SIGINT)
            demo.wait(timeout=60)
            reader.join(timeout=10)

        assert demo.returncode == 0, "".join(lines)
        assert "demo stopped" in "".join(lines)
        assert not port_open(broker_port)
        assert not port_open(gateway_port)
        for pid in killed_broker:
            assert not pid_alive(pid), f"demo process {pid} left running"
        assert not port_open(ldap_port)
        assert (
            f"swvdi-{DEMO_SESSION_HOST}"
            not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        )
        https_config = load_config(tmp_path / "lab" / "demo-https.toml")
        assert not port_open(int(https_config.certificate.ocsp_url.rsplit(":", 1)[1].strip("/")))


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
