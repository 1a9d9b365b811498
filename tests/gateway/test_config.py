"""A gateway reads only its own section and the database's: its file needs no broker secrets."""

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, load_gateway_config
from vdi.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]

GATEWAY_ONLY = """
[database]
url = "sqlite:///gateway.db"

[gateway]
port = 18081
allowed_origins = ["https://portal.example"]
"""


def test_a_gateway_file_without_broker_sections_is_enough(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_ONLY)
    config = load_gateway_config(path)
    assert config.gateway.port == 18081
    assert config.database.url == f"sqlite:///{tmp_path / 'gateway.db'}"
    # Nothing of the broker's reaches a gateway: no cookie secret, directory or hosts.
    assert set(GatewayConfig.model_fields) == {"gateway", "database", "logging"}


def test_the_full_file_hands_each_process_only_its_part():
    config = parse_config(
        {
            "broker": {"cookie_secret": "s" * 32},
            "ldap": {"user_base": "ou=people,dc=x", "group_base": "ou=groups,dc=x"},
            "hosts": [{"name": "local"}],
            "gateway": {"port": 18082},
        }
    )
    gateway = config.gateway_config()
    assert gateway.gateway.port == 18082 and not hasattr(gateway, "broker")
    broker = config.broker_config()
    assert broker.broker.cookie_secret.get_secret_value() == "s" * 32
    assert not hasattr(broker, "gateway") and not hasattr(broker, "lab")


def test_a_bad_gateway_value_names_its_key(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_ONLY.replace("port = 18081", "port = 99999"))
    with pytest.raises(ConfigError, match=r"^gateway\.port:"):
        load_gateway_config(path)


def test_vdi_broker_refuses_a_gateway_only_file_naming_the_missing_section(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_ONLY)
    result = subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(path), "broker"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "broker: Field required" in result.stderr


def test_the_vnc_password_key_must_be_the_same_for_broker_and_gateway_in_one_file():
    sections = {
        "broker": {"cookie_secret": "s" * 32, "vnc_password_key": "a" * 32},
        "ldap": {"user_base": "ou=people,dc=x", "group_base": "ou=groups,dc=x"},
        "hosts": [{"name": "local"}],
        "gateway": {"vnc_password_key": "b" * 32},
    }
    with pytest.raises(
        ConfigError, match=r"gateway\.vnc_password_key: differs from broker\.vnc_password_key"
    ):
        parse_config(sections)
    sections["gateway"]["vnc_password_key"] = "a" * 32
    assert parse_config(sections).gateway_config().gateway.vnc_password_key.get_secret_value() == "a" * 32


def test_rfb_limits_are_validated(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY_ONLY + "max_message_bytes = 10\n")
    with pytest.raises(ConfigError, match=r"^gateway\.max_message_bytes:"):
        load_gateway_config(path)
