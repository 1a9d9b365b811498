"""The smartwork_broker and smartwork_gateway roles applied for real to this machine (local connection).

Everything the roles make goes under a temporary directory (virtual environment, configuration, database)
and a service account with a unique name; the package is a wheel built from this checkout (as a release
is shipped: pip rebuilds and reinstalls a source directory on every run, a wheel only once). Then the installed
`vdi broker` and `vdi gateway` are started from the role's virtual environment with the role's
configuration, and a demo user logs in against the real test directory. A second run of each role
must change nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.ansible import ANSIBLE_DIR, REPO, ansible_playbook, recap
from tests.fixtures.broker import BrokerClient
from tests.fixtures.common import free_port, wait_until
from tests.fixtures.e2e import http_ok, port_open
from vdi.lab.slapd import DEMO_PASSWORD, Slapd

BROKER_PLAYBOOK = str(ANSIBLE_DIR / "playbooks" / "broker.yml")
GATEWAY_PLAYBOOK = str(ANSIBLE_DIR / "playbooks" / "gateway.yml")
START_DEADLINE_S = 60.0


class Deployment:
    def __init__(self, root: Path, slapd: Slapd, wheel: Path) -> None:
        token = secrets.token_hex(3)
        self.root = root
        self.user = f"swsvc{token}"
        self.venv = root / "venv"
        self.config = root / "etc" / "vdi.toml"
        self.gateway_config = root / "etc" / "gateway.toml"
        self.broker_port = free_port()
        self.gateway_port = free_port()
        self.inventory = root / "inventory.yml"
        # No sudo on the lab machines and the tests run as root: become would only fail.
        self.inventory.write_text(
            "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n      ansible_become: false\n"
            "  children:\n    brokers:\n      hosts:\n        localhost:\n"
            "    gateways:\n      hosts:\n        localhost:\n"
        )
        ldap = slapd.settings()
        key = root / "gateway_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.key_path = root / "etc" / "gateway_ssh_key"
        self.known_hosts_path = root / "etc" / "gateway_known_hosts"
        self.known_host_line = "10.77.0.11 " + (root / "gateway_key.pub").read_text().split(" gw")[0].strip()
        portal = f"http://127.0.0.1:{self.broker_port}"
        self.variables = {
            "smartwork_broker_package": str(wheel),
            "smartwork_broker_venv": str(self.venv),
            "smartwork_broker_config_path": str(self.config),
            "smartwork_broker_database_url": f"sqlite:///{root / 'vdi.db'}",
            "smartwork_broker_port": self.broker_port,
            "smartwork_broker_cookie_secret": secrets.token_hex(32),
            "smartwork_broker_gateway_url": f"ws://127.0.0.1:{self.gateway_port}/ws",
            "smartwork_broker_ldap_url": ldap.url,
            "smartwork_broker_ldap_user_base": ldap.user_base,
            "smartwork_broker_ldap_group_base": ldap.group_base,
            "smartwork_broker_user": self.user,
            # One machine, one virtual environment and database; each service its own configuration.
            "smartwork_gateway_package": str(wheel),
            "smartwork_gateway_venv": str(self.venv),
            "smartwork_gateway_config_path": str(self.gateway_config),
            "smartwork_gateway_database_url": f"sqlite:///{root / 'vdi.db'}",
            "smartwork_gateway_port": self.gateway_port,
            "smartwork_gateway_allowed_origins": [portal],
            "smartwork_gateway_user": self.user,
            "smartwork_gateway_ssh_private_key": key.read_text(),
            "smartwork_gateway_ssh_known_hosts": [self.known_host_line],
            "smartwork_gateway_ssh_key_path": str(self.key_path),
            "smartwork_gateway_ssh_known_hosts_path": str(self.known_hosts_path),
        }
        self.portal = portal

    def apply(self, playbook: str) -> dict[str, int]:
        return recap(ansible_playbook("-i", str(self.inventory), playbook, "-e", json.dumps(self.variables)))

    def remove(self) -> None:
        subprocess.run(["userdel", self.user], capture_output=True, check=False)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, slapd: Slapd) -> Iterator[tuple[Deployment, list]]:
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("smartwork_vdi-*.whl")
    deployment = Deployment(tmp_path_factory.mktemp("roles"), slapd, wheel)
    try:
        first_runs = [deployment.apply(BROKER_PLAYBOOK), deployment.apply(GATEWAY_PLAYBOOK)]
        yield deployment, first_runs
    finally:
        deployment.remove()


def test_roles_install_the_package_config_and_account(deployment):
    deployed, (broker_run, gateway_run) = deployment

    assert broker_run["changed"] > 0
    assert gateway_run["failed"] == 0
    assert (deployed.venv / "bin" / "vdi").exists()
    mode = deployed.config.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o640
    assert mode.st_gid == int(subprocess.check_output(["id", "-g", deployed.user]).strip())
    text = deployed.config.read_text()
    assert f"port = {deployed.broker_port}" in text
    assert deployed.variables["smartwork_broker_ldap_url"] in text
    gateway_text = deployed.gateway_config.read_text()
    assert f"port = {deployed.gateway_port}" in gateway_text
    assert deployed.portal in gateway_text  # the allowed origin
    # A gateway machine carries none of the broker's secrets or directory and host settings.
    for broker_only in ("cookie_secret", "[broker]", "[ldap]", "[[hosts]]"):
        assert broker_only not in gateway_text
    # SSH display routes: the gateway's key (its own, 0600) and the hosts' keys, named in its config.
    assert f'ssh_key_file = "{deployed.key_path}"' in gateway_text
    assert f'ssh_known_hosts = "{deployed.known_hosts_path}"' in gateway_text
    key = deployed.key_path.stat()
    assert stat.S_IMODE(key.st_mode) == 0o600
    assert key.st_uid == int(subprocess.check_output(["id", "-u", deployed.user]).strip())
    assert deployed.known_hosts_path.read_text() == deployed.known_host_line + "\n"
    assert "PRIVATE KEY" in deployed.key_path.read_text()


def test_second_runs_change_nothing(deployment):
    deployed, _ = deployment

    assert deployed.apply(BROKER_PLAYBOOK)["changed"] == 0
    assert deployed.apply(GATEWAY_PLAYBOOK)["changed"] == 0


def test_installed_broker_and_gateway_serve_with_the_roles_configuration(deployment, tmp_path):
    deployed, _ = deployment
    vdi = str(deployed.venv / "bin" / "vdi")
    env = {key: value for key, value in os.environ.items() if not key.startswith("VIRTUAL_ENV")}
    logs = [(tmp_path / "broker.log").open("wb"), (tmp_path / "gateway.log").open("wb")]
    commands = (("broker", deployed.config), ("gateway", deployed.gateway_config))
    processes = [
        subprocess.Popen(
            [vdi, "--config", str(config), command], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        for (command, config), log in zip(commands, logs, strict=True)
    ]
    try:
        wait_until(lambda: http_ok(f"{deployed.portal}/healthz"), START_DEADLINE_S, "the installed broker")
        wait_until(lambda: port_open(deployed.gateway_port), START_DEADLINE_S, "the installed gateway")
        client = BrokerClient(deployed.portal)
        response = client.login("kimmj", DEMO_PASSWORD)
        assert response.status == 200, response.body[:500]
        assert response.json()["user"]["username"] == "kimmj"
        assert DEMO_PASSWORD not in (tmp_path / "broker.log").read_text(errors="replace")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        for log in logs:
            log.close()
    assert all(process.returncode == 0 for process in processes), [p.returncode for p in processes]
