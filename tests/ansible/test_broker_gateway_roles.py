"""The smartwork_broker and smartwork_gateway roles applied for real to this machine (local connection).

Everything the roles make goes under a temporary directory (virtual environment, configuration, database)
and a service account with a unique name; the package is a wheel built from this checkout (as a release
is shipped: pip rebuilds and reinstalls a source directory on every run, a wheel only once). Then the installed
`vdi broker` and `vdi gateway` are started from the role's virtual environment with the role's
configuration, and a demo user logs in against the real test directory. A second run of each role
must change nothing.
"""

from __future__ import annotations

import configparser
import json
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.ansible import ANSIBLE_DIR, ansible_playbook, recap
from tests.fixtures.broker import BrokerClient
from tests.fixtures.common import build_wheel, free_port, wait_until
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
        self.state_dir = root / "state"
        self.unit_dir = root / "systemd"
        self.unit_dir.mkdir()
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
            "smartwork_broker_state_dir": str(self.state_dir),
            "smartwork_broker_database_url": f"sqlite:///{self.state_dir / 'vdi.db'}",
            # The units are installed (as under systemd) into a directory of the test's own.
            "smartwork_broker_systemd_unit": True,
            "smartwork_broker_systemd_unit_dir": str(self.unit_dir),
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
            "smartwork_gateway_state_dir": str(self.state_dir),
            "smartwork_gateway_database_url": f"sqlite:///{self.state_dir / 'vdi.db'}",
            "smartwork_gateway_systemd_unit": True,
            "smartwork_gateway_systemd_unit_dir": str(self.unit_dir),
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
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, slapd: Slapd) -> Iterator[tuple[Deployment, list]]:
    wheels = tmp_path_factory.mktemp("wheels")
    built = build_wheel(wheels)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("smartwork_vdi-*.whl")
    # The service account walks to its files: not under pytest's private temporary tree.
    root = Path(tempfile.mkdtemp(prefix="swvdi-roles-"))
    root.chmod(0o755)
    deployment = Deployment(root, slapd, wheel)
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


def unit_commands(unit: Path) -> tuple[str, list[list[str]], list[str]]:
    """The unit's User, its ExecStartPre commands and its ExecStart command."""
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read_string(unit.read_text())
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStartPre=")]
    pre = [shlex.split(line.partition("=")[2]) for line in lines]
    return service["Service"]["User"], pre, shlex.split(service["Service"]["ExecStart"])


def as_unit_runs(user: str, argv: list[str]) -> list[str]:
    """argv as systemd runs it for this unit: as User= with its groups, with NoNewPrivileges=."""
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--no-new-privs", "--", *argv]


def unit_environment(user: str) -> dict[str, str]:
    # systemd gives a service a clean environment: PATH, and USER/LOGNAME/HOME for User=.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "USER": user,
        "LOGNAME": user,
        "HOME": "/",
        "LANG": "C.UTF-8",
    }


def test_installed_units_verify(deployment):
    deployed, _ = deployment
    units = [deployed.unit_dir / "smartwork-broker.service", deployed.unit_dir / "smartwork-gateway.service"]

    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)

    assert result.returncode == 0, result.stderr
    assert all(unit_commands(unit)[0] == deployed.user for unit in units)
    assert unit_commands(units[0])[1] == [
        [str(deployed.venv / "bin" / "vdi"), "--config", str(deployed.config), "db", "upgrade"]
    ]


def test_the_units_commands_serve_as_the_service_account(deployment, tmp_path):
    """What systemd would run: ExecStartPre, then ExecStart, as User= without new privileges; stop is SIGTERM."""
    deployed, _ = deployment
    broker_user, broker_pre, broker_start = unit_commands(deployed.unit_dir / "smartwork-broker.service")
    gateway_user, _, gateway_start = unit_commands(deployed.unit_dir / "smartwork-gateway.service")
    for argv in broker_pre:
        migrate = subprocess.run(
            as_unit_runs(broker_user, argv), env=unit_environment(broker_user), capture_output=True
        )
        assert migrate.returncode == 0, migrate.stderr.decode(errors="replace")[-2000:]
    logs = [(tmp_path / "broker.log").open("wb"), (tmp_path / "gateway.log").open("wb")]
    units = ((broker_user, broker_start), (gateway_user, gateway_start))
    processes = [
        subprocess.Popen(
            as_unit_runs(user, argv), stdout=log, stderr=subprocess.STDOUT, env=unit_environment(user)
        )
        for (user, argv), log in zip(units, logs, strict=True)
    ]
    try:
        wait_until(
            lambda: http_ok(f"{deployed.portal}/healthz"), START_DEADLINE_S, "the broker unit's command"
        )
        wait_until(lambda: port_open(deployed.gateway_port), START_DEADLINE_S, "the gateway unit's command")
        for process in processes:
            status = Path(f"/proc/{process.pid}/status").read_text()
            uid = int(subprocess.check_output(["id", "-u", deployed.user]).strip())
            assert f"Uid:\t{uid}\t" in status and "NoNewPrivs:\t1" in status
        client = BrokerClient(deployed.portal)
        response = client.login("kimmj", DEMO_PASSWORD)
        assert response.status == 200, response.body[:500]
        assert response.json()["user"]["username"] == "kimmj"
        assert DEMO_PASSWORD not in (tmp_path / "broker.log").read_text(errors="replace")
        assert (deployed.state_dir / "vdi.db").stat().st_uid == uid
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)  # systemctl stop
        for process in processes:
            process.wait(timeout=30)
        for log in logs:
            log.close()
    assert all(process.returncode == 0 for process in processes), [p.returncode for p in processes]
