"""The smartwork_hypervisor role: a check-mode run of all of it against this machine, and a real run of
the safe part (storage pool in a temporary directory with a unique name, a gateway account) twice."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.ansible import ANSIBLE_DIR, ansible_playbook, recap

PLAYBOOK = str(ANSIBLE_DIR / "playbooks" / "hypervisor.yml")
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsmartworkvdiTESTkeyonlyNOTREAL0000000000000 gw@test"


@pytest.fixture
def names(libvirtd) -> dict[str, str]:
    token = secrets.token_hex(3)
    return {"pool": f"swtest-{token}", "user": f"swgw{token}"}


@pytest.fixture
def inventory(tmp_path: Path, names) -> Path:
    path = tmp_path / "inventory.yml"
    # No sudo on the lab machines and the tests run as root: become would only fail.
    path.write_text(
        "all:\n  children:\n    hypervisors:\n      hosts:\n        localhost:\n"
        "          ansible_connection: local\n          ansible_become: false\n"
    )
    yield path
    subprocess.run(["virsh", "-c", "qemu:///system", "pool-destroy", names["pool"]], capture_output=True)
    subprocess.run(["virsh", "-c", "qemu:///system", "pool-undefine", names["pool"]], capture_output=True)
    subprocess.run(["userdel", "-r", names["user"]], capture_output=True)


def run(inventory: Path, tmp_path: Path, names, *extra: str) -> subprocess.CompletedProcess:
    variables = {
        "smartwork_hypervisor_storage_pool": names["pool"],
        "smartwork_hypervisor_storage_path": str(tmp_path / "pool"),
        "smartwork_hypervisor_gateway_user": names["user"],
        "smartwork_hypervisor_gateway_home": str(tmp_path / "home"),
        "smartwork_hypervisor_gateway_public_key": PUBLIC_KEY,
    }
    return ansible_playbook("-i", str(inventory), PLAYBOOK, "-e", json.dumps(variables), *extra)


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True).stdout


def test_check_mode_of_the_whole_role_changes_nothing_on_the_machine(inventory, tmp_path, names):
    result = run(inventory, tmp_path, names, "--check")

    assert recap(result)["failed"] == 0
    assert names["pool"] not in virsh("pool-list", "--all", "--name").split()
    assert not (tmp_path / "pool").exists()


def test_real_run_makes_the_pool_and_gateway_access_and_a_second_run_changes_nothing(
    inventory, tmp_path, names
):
    safe_part = (
        "-e",
        "smartwork_hypervisor_manage_packages=false",
        "-e",
        "smartwork_hypervisor_manage_daemon=false",
    )

    first = recap(run(inventory, tmp_path, names, *safe_part))
    second = recap(run(inventory, tmp_path, names, *safe_part))

    assert first["changed"] > 0
    assert second["changed"] == 0
    info = virsh("pool-info", names["pool"])
    assert "running" in info and "Autostart:      yes" in info
    assert str(tmp_path / "pool") in virsh("pool-dumpxml", names["pool"])
    keys = (tmp_path / "home" / ".ssh" / "authorized_keys").read_text()
    assert keys == f'restrict,port-forwarding,permitopen="127.0.0.1:*",command="/bin/false" {PUBLIC_KEY}\n'
    assert oct((tmp_path / "home" / ".ssh" / "authorized_keys").stat().st_mode & 0o777) == "0o600"
    assert not Path(f"/run/smartwork-pool-{names['pool']}.xml").exists()
