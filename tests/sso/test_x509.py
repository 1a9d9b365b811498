"""Chain, dates, key usage, EKU and policies of client certificates from the lab PKI."""

from __future__ import annotations

import datetime as dt

import pytest

from sso.x509 import CertificateRefused, CertificateValidator, load_pem_bundles, parse_certificate
from vdi.config import ConfigError, parse_config
from vdi.lab.pki import LAB_POLICY_OID


@pytest.fixture
def validator(lab_pki) -> CertificateValidator:
    pki = lab_pki.pki
    return CertificateValidator(
        load_pem_bundles([pki.roots_file]), load_pem_bundles([pki.intermediates_file]), [LAB_POLICY_OID]
    )


def test_valid_user_certificate_chains_to_the_root(validator, lab_pki):
    pki = lab_pki.pki
    validated = validator.validate(pki.users["kimmj"].cert)
    assert validated.issuer == pki.intermediate.cert
    assert validated.chain[-1] == pki.root.cert


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("expired", "certificate expired at"),
        ("unknown-ca", "untrusted chain"),
        ("wrong-policy", f"required certificate policy missing: {LAB_POLICY_OID}"),
        ("no-client-auth", "extendedKeyUsage lacks id-kp-clientAuth"),
        ("no-subject", "empty subject"),
    ],
)
def test_bad_certificates_are_refused_with_their_reason(validator, lab_pki, user, reason):
    with pytest.raises(CertificateRefused) as refused:
        validator.validate(lab_pki.pki.users[user].cert)
    assert reason in refused.value.reason
    assert refused.value.public_message == CertificateRefused.public_message


def test_not_yet_valid_is_refused(validator, lab_pki):
    cert = lab_pki.pki.users["kimmj"].cert
    with pytest.raises(CertificateRefused, match="not valid before"):
        validator.validate(cert, now=cert.not_valid_before_utc - dt.timedelta(hours=1))


def test_without_the_intermediate_the_chain_does_not_build(lab_pki):
    pki = lab_pki.pki
    validator = CertificateValidator(load_pem_bundles([pki.roots_file]), [], [LAB_POLICY_OID])
    with pytest.raises(CertificateRefused, match="untrusted chain"):
        validator.validate(pki.users["kimmj"].cert)


def test_no_required_policies_accepts_any_policy(lab_pki):
    pki = lab_pki.pki
    validator = CertificateValidator(
        load_pem_bundles([pki.roots_file]), load_pem_bundles([pki.intermediates_file]), []
    )
    assert validator.validate(pki.users["wrong-policy"].cert).leaf == pki.users["wrong-policy"].cert


@pytest.mark.parametrize(
    "data", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"]
)
def test_garbage_is_refused_as_malformed(data):
    with pytest.raises(CertificateRefused, match="malformed certificate"):
        parse_certificate(data)


def test_pem_and_der_parse_to_the_same_certificate(lab_pki):
    user = lab_pki.pki.users["kimmj"]
    assert parse_certificate(user.cert_path.read_bytes()) == parse_certificate(user.der) == user.cert


def test_an_unreadable_anchor_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.pem"):
        load_pem_bundles([tmp_path / "missing.pem"])


def test_certificate_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"certificate: .*trust_anchors"):
        parse_config(_config(certificate={"enabled": True}))
    with pytest.raises(ConfigError, match=r"required_policies: not an OID: 'gpki'"):
        parse_config(_config(certificate={"required_policies": ["gpki"]}))
    with pytest.raises(ConfigError, match=r"certificate\.fail_mode"):
        parse_config(_config(certificate={"fail_mode": "maybe"}))
    with pytest.raises(ConfigError, match=r"certificate\.trusted_proxies\[0\]"):
        parse_config(_config(certificate={"trusted_proxies": ["not-an-address"]}))


def test_broker_tls_settings_come_in_pairs():
    with pytest.raises(ConfigError, match="tls_key: tls_cert and tls_key must be set together"):
        parse_config(_config(broker={"cookie_secret": "x" * 32, "tls_cert": "/etc/cert.pem"}))
    with pytest.raises(ConfigError, match="tls_client_ca: needs tls_cert and tls_key"):
        parse_config(_config(broker={"cookie_secret": "x" * 32, "tls_client_ca": "/etc/ca.pem"}))


def _config(**sections) -> dict:
    data = {
        "broker": {"cookie_secret": "x" * 32},
        "ldap": {"user_base": "ou=people,dc=test", "group_base": "ou=groups,dc=test"},
        "hosts": [{"name": "local", "uri": "qemu:///system"}],
    }
    data.update(sections)
    return data


def test_subject_dn_template_escapes_values_so_no_rdn_can_be_added(lab_pki):
    from cryptography import x509 as cx509

    from sso.cert_mapping import SubjectDnMapping
    from sso.config import CertificateSettings

    cert = lab_pki.pki.users["kimmj"].cert
    mapping = SubjectDnMapping(CertificateSettings(subject_dn_template="uid={UID},ou=people,dc=test"))
    assert mapping.user_dn(cert) == "uid=kimmj,ou=people,dc=test"
    crafted = cx509.Name([cx509.NameAttribute(cx509.oid.NameOID.USER_ID, "x,ou=admins")])
    assert mapping.user_dn(_with_subject(crafted)) == "uid=x\\,ou\\=admins,ou=people,dc=test"


def _with_subject(subject):
    """A stand-in exposing only `subject`, which is all user_dn reads."""
    return type("Cert", (), {"subject": subject})()
