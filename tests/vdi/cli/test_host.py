"""`vdi host …` against a real database and libvirt's test driver."""

import json

import pytest

from tests.fixtures.cli import cli_runner, write_cli_config
from vdi.cli import main

SEEDED_LABELS = 'labels = { zone = "business" }\n'  # keys of the seeded host


@pytest.fixture
def vdi(tmp_path, capsys):
    return cli_runner(write_cli_config(tmp_path, SEEDED_LABELS), "host", capsys)


def test_host_lifecycle_from_the_command_line(vdi):
    code, out, _ = vdi("add", "hv1", "--uri", "test:///default", "--label", "gpu=true", "--vcpus", "8")
    assert code == 0 and json.loads(out)["capacity"]["vcpus"] == 8
    assert vdi("drain", "hv1")[0] == 0
    code, out, _ = vdi("list", "--json")
    hosts = {h["name"]: h for h in json.loads(out)}
    assert hosts["hv1"]["admin_state"] == "draining"
    assert hosts["seeded"]["labels"] == {"zone": "business"}
    assert vdi("enable", "hv1")[0] == 0
    assert json.loads(vdi("show", "hv1")[1])["admin_state"] == "enabled"
    assert "removed" in vdi("remove", "hv1")[1]
    code, _, err = vdi("show", "hv1")
    assert code == 2 and "no host named hv1" in err


def test_cli_errors_name_the_field(vdi):
    code, _, err = vdi("add", "hv2", "--uri", "qemu+tcp://127.0.0.1:1/system")
    assert code == 2 and "uri: the host cannot be reached" in err
    code, _, err = vdi("add", "hv2", "--uri", "test:///default", "--vcpus", "-1")
    assert code == 2 and "vcpus" in err
    code, _, err = vdi("add", "seeded", "--uri", "test:///default")
    assert code == 2 and "already exists" in err


def test_provider_from_the_command_line(vdi, toy_provider):
    code, out, _ = vdi("add", "toy1", "--provider", "toy", "--uri", "toy:///toy1")
    assert code == 0 and json.loads(out)["provider"] == "toy"
    assert json.loads(vdi("show", "seeded")[1])["provider"] == "libvirt"
    code, _, err = vdi("add", "hv5", "--provider", "vmware", "--uri", "vmware://vcenter/dc")
    assert (
        code == 2 and err.startswith("vdi host add: provider") and "known: libvirt, session-host, toy" in err
    )
    code, _, err = vdi("add", "hv5", "--provider", "toy", "--uri", "test:///default")
    assert code == 2 and err.startswith("vdi host add: uri")
    assert vdi("show", "hv5")[0] == 2


def test_console_route_from_the_command_line(vdi):
    code, out, _ = vdi(
        "add",
        "hv3",
        "--uri",
        "test:///default",
        "--console-access",
        "ssh",
        "--ssh-address",
        "vdi@10.0.0.3:2222",
    )
    host = json.loads(out)
    assert code == 0 and (host["console_access"], host["ssh_address"]) == ("ssh", "vdi@10.0.0.3:2222")
    seeded = json.loads(vdi("show", "seeded")[1])
    assert (seeded["console_access"], seeded["ssh_address"]) == ("direct", None)
    assert "ssh vdi@10.0.0.3:2222" in vdi("list")[1]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (["--console-access", "telnet"], "console_access"),
        (["--ssh-address", "vdi@bad host"], "ssh_address"),
        (["--ssh-address", "vdi@hv:99999"], "ssh_address"),
        (["--console-access", "ssh"], "ssh_address"),  # test:/// names no SSH host to default to
    ],
)
def test_bad_console_route_names_the_field_and_stores_nothing(vdi, options, field):
    code, _, err = vdi("add", "hv4", "--uri", "test:///default", *options)
    assert code == 2 and err.startswith(f"vdi host add: {field}")
    assert vdi("show", "hv4")[0] == 2


def test_qemu_ssh_hosts_default_to_the_ssh_route(tmp_path, capsys):
    path = write_cli_config(
        tmp_path,
        SEEDED_LABELS
        + '\n[[hosts]]\nname = "remote"\nuri = "qemu+ssh://admin@hv9.example:2222/system"\n'
        + '\n[[hosts]]\nname = "plain"\nuri = "qemu+ssh://hv8.example/system"\n',
    )
    assert main(["--config", str(path), "host", "list", "--json"]) == 0
    hosts = {h["name"]: h for h in json.loads(capsys.readouterr().out)}
    assert (hosts["remote"]["console_access"], hosts["remote"]["ssh_address"]) == (
        "ssh",
        "admin@hv9.example:2222",
    )
    assert (hosts["plain"]["console_access"], hosts["plain"]["ssh_address"]) == ("ssh", "root@hv8.example:22")
    assert hosts["seeded"]["console_access"] == "direct"
