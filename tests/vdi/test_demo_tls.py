"""The demo's HTTPS pieces: its configuration file, its CA and the PKCS#12 files it hands to users."""

from __future__ import annotations

import tomllib

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tests.fixtures.common import ROOT
from vdi.config import ConfigError, load_config, parse_config
from vdi.demo_tls import CERT_USERS, P12_PASSWORD, ensure_pki, write_https_config


@pytest.fixture
def demo_config(tmp_path):
    config = load_config(ROOT / "etc" / "demo.toml")
    config.lab.state_dir = tmp_path / "lab"
    config.lab.state_dir.mkdir()
    return config


def test_the_https_config_serves_tls_and_keeps_everything_else(demo_config):
    tls = ensure_pki(demo_config)
    path = write_https_config(demo_config, tls, 40123)
    assert path.stat().st_mode & 0o077 == 0  # it holds the cookie secret

    https = parse_config(tomllib.loads(path.read_text()))

    assert https.broker.tls_cert == tls.server_chain and https.broker.tls_client_ca == tls.chain_file
    assert https.broker.gateway_url == "wss://127.0.0.1:8081/ws"
    assert https.gateway.tls_cert == tls.server_chain
    assert https.gateway.allowed_origins == ["https://127.0.0.1:8080", "https://localhost:8080"]
    assert https.certificate.enabled and https.certificate.ocsp_url == "http://127.0.0.1:40123/"
    # What the file said stays as it was, with its relative paths made absolute.
    assert https.broker.cookie_secret == demo_config.broker.cookie_secret
    assert https.database.url == demo_config.database.url and https.database.url.startswith("sqlite:////")
    assert [pool.name for pool in https.pools] == [pool.name for pool in demo_config.pools]


def test_the_ca_is_made_once_and_the_p12_files_open_with_the_printed_password(demo_config):
    tls = ensure_pki(demo_config)
    first_ca = tls.ca_file.read_bytes()
    for uid in CERT_USERS:
        key, cert, chain = pkcs12.load_key_and_certificates(tls.p12(uid).read_bytes(), P12_PASSWORD.encode())
        assert cert.subject.get_attributes_for_oid(NameOID.USER_ID)[0].value == uid
        assert key is not None and len(chain) == 1  # the intermediate, so the server can build the path
        assert tls.p12(uid).stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError):
        pkcs12.load_key_and_certificates(tls.p12("kimmj").read_bytes(), b"wrong")

    assert ensure_pki(demo_config).ca_file.read_bytes() == first_ca  # imported once, valid next time too


def test_gateway_tls_needs_both_files():
    with pytest.raises(ConfigError, match=r"gateway: .*tls_key: tls_cert and tls_key must be set together"):
        parse_config(
            {
                "broker": {"cookie_secret": "x" * 32},
                "gateway": {"tls_cert": "/etc/ssl/gateway.pem"},
                "ldap": {"user_base": "ou=people,dc=x", "group_base": "ou=groups,dc=x"},
                "hosts": [{"name": "local", "uri": "test:///default"}],
            }
        )
