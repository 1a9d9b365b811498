"""`vdi host …` against a real database and libvirt's test driver."""

import json

import pytest

from tests.fixtures.broker import COOKIE_SECRET
from vdi.cli import main

CONFIG = """
[database]
url = "sqlite:///{db}"

[broker]
cookie_secret = "{secret}"

[ldap]
user_base = "ou=people,dc=test"
group_base = "ou=groups,dc=test"

[[hosts]]
name = "seeded"
uri = "test:///default"
labels = {{ zone = "business" }}
"""


@pytest.fixture
def vdi(tmp_path, capsys):
    path = tmp_path / "vdi.toml"
    path.write_text(CONFIG.format(db=tmp_path / "vdi.db", secret=COOKIE_SECRET))

    def run(*args):
        code = main(["--config", str(path), "host", *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


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
