"""`vdi demo`: the lab, the broker and the gateway together, in the foreground, over HTTPS.

The portal is served on https:// and the gateway on wss:// with a demo CA made under the lab state dir, and a
few demo users get client certificates for certificate login (vdi/demo_tls.py).

With `[lab] session_hosts` (etc/demo.toml names dsh1 and dsh2) the demo also brings up lab session hosts
(vdi/lab/session_hosts.py) and adds them to the broker's hosts, so the SBC pools of the file (kind session,
`required_labels = { provider = "session-host" }`) have somewhere to run: an XFCE desktop with Hangul input
in about a second, next to the VM pools.

The demo supervises the broker and the gateway the way systemd's Restart=on-failure would: one that dies is
logged and started again after 1, 2, 4 … up to 30 s (back to 1 s once it has stayed up a minute), while the
other one and the desktops keep running.

Ctrl-C (or `vdi demo --stop` / `make stop` from another shell) stops the broker and gateway,
removes the desktops the demo started, and stops the lab daemons and session hosts the demo started.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from vdi.config import Config
from vdi.demo_tls import (
    DemoTls,
    banner_lines,
    demo_tls,
    ensure_pki,
    ocsp_port,
    start_ocsp,
    store_certificates,
    write_https_config,
)

log = logging.getLogger("vdi.demo")

SERVICES = ("broker", "gateway")
# Started by the demo itself, stopped with the services.
HELPERS = ("ocsp",)


def _pid_file(config: Config, service: str) -> Path:
    return config.lab.state_dir / f"demo-{service}.pid"


def _running_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _health_url(config: Config, service: str) -> str:
    settings = config.broker if service == "broker" else config.gateway
    return f"https://{settings.listen_address}:{settings.port}/healthz"


def _wait_healthy(url: str, process: subprocess.Popen, tls: DemoTls, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    context = tls.client_context()
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} process exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as response:  # noqa: S310 - our own loopback URL
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy within {deadline_s:.0f} s")


def _start_service(config_path: Path, config: Config, service: str, tls: DemoTls) -> subprocess.Popen:
    log_path = config.lab.state_dir / f"demo-{service}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "vdi.cli", "--config", str(config_path), service],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _pid_file(config, service).write_text(str(process.pid))
    try:
        _wait_healthy(_health_url(config, service), process, tls)
    except RuntimeError:
        process.kill()  # never healthy: not left running beside the next attempt
        process.wait()
        raise
    return process


# Restart delays after a crash, as systemd's Restart=on-failure with a growing RestartSec would: 1, 2, 4 … 30 s,
# back to 1 s once a service has stayed up for STABLE_S.
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0


def backoff_delay(failures: int) -> float:
    """The wait before the restart that follows `failures` earlier crashes in a row (0 for the first crash)."""
    return min(BACKOFF_FIRST_S * 2 ** min(failures, 16), BACKOFF_MAX_S)


class Supervised:
    """A demo service (broker or gateway) restarted with backoff when it dies; the other one is left alone."""

    def __init__(self, name: str, start: Callable[[], subprocess.Popen]):
        self.name = name
        self._start = start
        self.failures = 0
        self.restart_at: float | None = None
        self.process: subprocess.Popen | None = start()
        self.started_at = time.monotonic()

    def check(self, now: float) -> None:
        """Called about once a second: notice a crash, and restart once its backoff has passed."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self._restart()
            return
        if self.process.poll() is None:
            if now - self.started_at >= STABLE_S:
                self.failures = 0
            return
        self._schedule(now, f"exited with status {self.process.returncode}")

    def _schedule(self, now: float, why: str) -> None:
        delay = backoff_delay(self.failures)
        self.failures += 1
        self.restart_at = now + delay
        log.warning(
            "demo %s %s; restarting it in %.0f s (crash %d in a row)", self.name, why, delay, self.failures
        )

    def _restart(self) -> None:
        self.restart_at = None
        try:
            self.process = self._start()
        except RuntimeError as exc:  # it died again while starting, or never became healthy
            self._schedule(time.monotonic(), f"did not start: {exc}")
            return
        self.started_at = time.monotonic()
        log.warning("demo %s restarted (pid %d)", self.name, self.process.pid)


def _print_banner(config: Config) -> None:
    from vdi.lab.slapd import DEMO_USERS

    url = f"https://{config.broker.listen_address}:{config.broker.port}/"
    lines = [
        "",
        "smartwork-vdi demo is running.",
        f"  Portal:  {url}",
        "  Demo logins (user / password / groups):",
    ]
    for user in DEMO_USERS:
        groups = ", ".join(user.groups) or "(no entitled group)"
        lines.append(f"    {user.uid:<10} {user.password:<12} {user.display_name} — {groups}")
    if config.lab.session_hosts:
        lines += [
            f"  Session hosts (SBC): {', '.join(config.lab.session_hosts)}; their pools show an XFCE desktop.",
            "    Hangul input: Shift+Space (or the 한/영 key) switches between Latin and 한글.",
        ]
    lines += banner_lines(config, demo_tls(config))
    lines += ["  Stop with Ctrl-C or `make stop`.", ""]
    print("\n".join(lines), flush=True)


def _session_hosts(config: Config):
    from vdi.lab.session_hosts import LabSessionHosts

    names = config.lab.session_hosts
    return LabSessionHosts(config.lab.state_dir / "session-hosts", names, config.lab.session_host_first_octet)


def with_session_hosts(config: Config) -> Config:
    """The configuration with the demo's session hosts as [[hosts]] and the gateway's SSH key for them."""
    from hypervisor.config import HostSettings

    if not config.lab.session_hosts:
        return config
    hosts = _session_hosts(config)
    known = {host.name for host in config.hosts}
    added = [
        HostSettings(
            name=name,
            provider="session-host",
            uri=hosts.uri(name),
            max_desktops=10,
            labels={"provider": "session-host"},
        )
        for name in config.lab.session_hosts
        if name not in known
    ]
    gateway = config.gateway
    if gateway.ssh_key_file is None:
        gateway = gateway.model_copy(
            update={"ssh_key_file": hosts.client_key, "ssh_known_hosts": hosts.known_hosts}
        )
    return config.model_copy(update={"hosts": [*config.hosts, *added], "gateway": gateway})


def _remove_demo_desktops(config: Config) -> None:
    from broker.desktops import remove_all_desktops

    try:
        count = remove_all_desktops(with_session_hosts(config))
    except Exception as exc:  # cleanup must go on to stop the lab
        log.warning("could not remove demo desktops: %s", exc)
        return
    if count:
        print(f"removed {count} demo desktop(s)")


def stop_demo(config: Config) -> int:
    # A foreground `vdi demo` cleans up after itself; asking it to stop (rather than cleaning up
    # alongside it) keeps two processes from destroying the same desktops at once.
    owner = _running_pid(_pid_file(config, "demo"))
    if owner and owner != os.getpid():
        os.kill(owner, signal.SIGTERM)
        _wait_exit(owner, deadline_s=120.0)
        print("demo stopped")
        return 0
    return _stop_everything(config)


def _stop_everything(config: Config) -> int:
    for service in SERVICES + HELPERS:
        pid = _running_pid(_pid_file(config, service))
        if pid:
            os.kill(pid, signal.SIGTERM)
            _wait_exit(pid)
        _pid_file(config, service).unlink(missing_ok=True)
    _remove_demo_desktops(config)
    from vdi.lab import Lab

    Lab(config).stop()
    if config.lab.session_hosts:
        _session_hosts(config).down()
    print("demo stopped")
    return 0


def _stop_services(processes: list[subprocess.Popen], deadline_s: float = 15.0) -> None:
    """SIGTERM the broker and gateway this demo started, and reap them (SIGKILL at the deadline)."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + deadline_s
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_exit(pid: int, deadline_s: float = 15.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _prepare_https(config: Config, lab, helpers: list) -> Path:
    """The demo CA and certificates, their OCSP responder and directory entries; the HTTPS config file."""
    tls = ensure_pki(config)
    port = ocsp_port(tls)
    responder = start_ocsp(config, tls, port)
    helpers.append(responder)
    _pid_file(config, "ocsp").write_text(str(responder.pid))
    store_certificates(lab.slapd, tls)
    return write_https_config(with_session_hosts(config), tls, port)


def stop_on_signals() -> threading.Event:
    """The demo's stop: Ctrl-C (SIGINT) and `vdi demo --stop` / `make stop` (SIGTERM) set the same event,
    so both take the one way out that stops everything the demo started."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_demo(config: Config, config_path: str) -> int:
    from broker.db.migrate import upgrade
    from images.demo import build_demo_image
    from vdi.lab import Lab

    if any(_running_pid(_pid_file(config, s)) for s in SERVICES):
        print("a demo is already running with this configuration:")
        _print_banner(config)
        return 0
    lab = Lab(config)
    lab.start()
    _pid_file(config, "demo").write_text(str(os.getpid()))
    upgrade(config.database.url)
    build_demo_image(config.images)
    supervised: list[Supervised] = []
    helpers: list = []
    stop = stop_on_signals()
    try:
        if config.lab.session_hosts:
            _session_hosts(config).up()
        https_config_path = _prepare_https(config, lab, helpers)
        for service in SERVICES:
            supervised.append(
                Supervised(
                    service, lambda s=service: _start_service(https_config_path, config, s, demo_tls(config))
                )
            )
        _print_banner(config)
        while not stop.wait(1.0):
            for service in supervised:
                service.check(time.monotonic())
    finally:
        print("stopping the demo ...", flush=True)
        for helper in helpers:
            helper.stop()  # and reaped: a zombie child would look alive to _stop_everything's pid check
        # Likewise reaped here, not left for _stop_everything to wait out.
        _stop_services([s.process for s in supervised if s.process is not None])
        _stop_everything(config)
        _pid_file(config, "demo").unlink(missing_ok=True)
    return 0
