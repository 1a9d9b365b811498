"""The configuration file is validated at start; errors name the key."""

import subprocess
import sys

import pytest

from tests.fixtures.common import ROOT
from vdi.config import ConfigError, load_config, parse_config

MINIMAL = {
    "broker": {"cookie_secret": "x" * 32},
    "ldap": {"user_base": "ou=people,dc=x", "group_base": "ou=groups,dc=x"},
    "hosts": [{"name": "local"}],
}


def with_(**changes):
    data = {k: (dict(v) if isinstance(v, dict) else list(v)) for k, v in MINIMAL.items()}
    for key, value in changes.items():
        data[key] = value
    return data


def test_demo_config_is_valid_and_resolves_relative_paths():
    config = load_config(ROOT / "etc" / "demo.toml")
    assert config.pool("mois-office").groups == ["mois"]
    assert config.database.url == f"sqlite:///{ROOT / 'var' / 'demo.db'}"
    assert config.lab.state_dir == ROOT / "var" / "lab"
    # An SBC desktop pool next to the VM pools, on the demo's own session hosts.
    assert config.pool("mois-sbc").kind == "session" and config.pool("mois-sbc").groups == ["mois"]
    assert config.lab.session_hosts == ["dsh1", "dsh2"]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"broker": {"cookie_secret": "short"}}, "broker.cookie_secret"),
        ({"broker": {"cookie_secret": "x" * 32, "port": 70000}}, "broker.port"),
        ({"broker": {"cookie_secret": "x" * 32, "console_token_ttl_s": 300}}, "broker.console_token_ttl_s"),
        ({"hosts": [{"name": "Bad Name!"}]}, "hosts[0].name"),
        ({"hosts": []}, "hosts"),
        ({"pools": [{"name": "p", "display_name": "P", "groups": []}]}, "pools[0].groups"),
        ({"gatewy": {}}, "gatewy"),
        ({"lab": {"session_hosts": ["Sh 1"]}}, "lab.session_hosts"),
        ({"lab": {"session_hosts": ["dsh1", "dsh1"]}}, "lab.session_hosts"),
        ({"lab": {"session_host_first_octet": 255}}, "lab.session_host_first_octet"),
    ],
)
def test_invalid_values_name_the_key(changes, key):
    with pytest.raises(ConfigError) as error:
        parse_config(with_(**changes))
    assert str(error.value).startswith(key + ":") or f"; {key}:" in str(error.value)


def test_duplicate_host_names_are_refused():
    with pytest.raises(ConfigError, match=r"hosts\[1\]\.name: duplicate"):
        parse_config(with_(hosts=[{"name": "a"}, {"name": "a"}]))


def test_secrets_are_not_echoed_in_errors():
    with pytest.raises(ConfigError) as error:
        parse_config(with_(broker={"cookie_secret": "hunter2"}))
    assert "hunter2" not in str(error.value)


def test_malformed_file_exits_non_zero_naming_the_key(tmp_path):
    bad = tmp_path / "vdi.toml"
    bad.write_text('[broker]\ncookie_secret = "x"\nport = "eighty"\n[ldap]\nuser_base="a"\ngroup_base="b"\n')
    result = subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(bad), "db", "upgrade"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert (
        "broker.port" in result.stderr
        and "broker.cookie_secret" in result.stderr
        and "hosts" in result.stderr
    )


def test_toml_syntax_error_is_reported(tmp_path):
    bad = tmp_path / "vdi.toml"
    bad.write_text("[broker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_configuration_reference_is_up_to_date():
    from vdi.config_reference import render

    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `python -m vdi.config_reference > docs/configuration.md`"
    )
