"""Certificate → directory user against a real slapd over StartTLS/ldaps, with the lab PKI and OCSP."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from sso.base import DirectoryUnavailable, InvalidCredentials
from sso.cert_auth import CertificateAuthenticator, CertificateLoginRefused
from sso.ldap import LdapAuthenticator
from vdi.lab.slapd import DEMO_PASSWORD


def run(coroutine):
    return asyncio.run(coroutine)


@pytest.fixture
def directory(tls_ldap_settings):
    authenticator = LdapAuthenticator(tls_ldap_settings)
    yield authenticator
    authenticator.close()


def authenticator_for(settings, directory, **changes) -> CertificateAuthenticator:
    return CertificateAuthenticator.from_settings(settings.model_copy(update=changes), directory)


@pytest.mark.parametrize("mapping", ["userCertificate", "issuer_serial"])
def test_certificate_stored_in_the_directory_maps_to_its_user(
    certificate_settings, directory, lab_pki, mapping
):
    authenticator = authenticator_for(certificate_settings, directory, mapping=mapping)
    login = run(authenticator.authenticate(lab_pki.pki.users["kimmj"].der))
    assert login.identity.username == "kimmj"
    assert login.identity.groups == ["mois"]
    assert login.certificate["serial"] == f"{lab_pki.pki.users['kimmj'].cert.serial_number:x}"
    authenticator.close()


def test_certificate_not_in_the_directory_is_refused(certificate_settings, directory, lab_pki):
    authenticator = authenticator_for(certificate_settings, directory)
    with pytest.raises(CertificateLoginRefused, match="no directory user"):
        run(authenticator.authenticate(lab_pki.pki.users["choijw"].der))
    authenticator.close()


def test_san_email_maps_to_the_mail_attribute(certificate_settings, directory, lab_pki):
    authenticator = authenticator_for(certificate_settings, directory, mapping="san")
    login = run(authenticator.authenticate(lab_pki.pki.users["kimmj"].cert_path.read_bytes()))
    assert login.identity.username == "kimmj"
    assert login.identity.groups == ["mois"]
    authenticator.close()


def test_subject_dn_template_maps_to_the_user_dn(certificate_settings, directory, lab_pki):
    template = "uid={UID},ou=people,dc=smartwork,dc=go,dc=kr"
    authenticator = authenticator_for(
        certificate_settings, directory, mapping="subject_dn", subject_dn_template=template
    )
    assert run(authenticator.authenticate(lab_pki.pki.users["kimmj"].der)).identity.username == "kimmj"
    authenticator.close()


def test_subject_dn_equality_without_such_entry_is_refused(certificate_settings, directory, lab_pki):
    authenticator = authenticator_for(certificate_settings, directory, mapping="subject_dn")
    with pytest.raises(CertificateLoginRefused, match="no such user"):
        run(authenticator.authenticate(lab_pki.pki.users["kimmj"].der))
    authenticator.close()


def test_several_matching_entries_are_refused_as_ambiguous(certificate_settings, directory, lab_pki):
    authenticator = authenticator_for(certificate_settings, directory)
    with pytest.raises(CertificateLoginRefused, match="ambiguous: 2 or more directory entries"):
        run(authenticator.authenticate(lab_pki.pki.users["shared"].der))
    authenticator.close()


def test_password_login_over_starttls(tls_ldap_settings):
    authenticator = LdapAuthenticator(tls_ldap_settings)
    assert run(authenticator.authenticate("kimmj", DEMO_PASSWORD)).groups == ["mois"]
    authenticator.close()


def test_password_login_over_ldaps(tls_ldap_settings, tls_slapd):
    settings = tls_ldap_settings.model_copy(update={"url": tls_slapd.ldaps_url, "start_tls": False})
    authenticator = LdapAuthenticator(settings)
    assert run(authenticator.authenticate("leesy", DEMO_PASSWORD)).username == "leesy"
    with pytest.raises(InvalidCredentials):
        run(authenticator.authenticate("leesy", "wrong"))
    authenticator.close()


@pytest.mark.parametrize("ldaps", [False, True])
def test_directory_with_a_certificate_from_another_ca_is_refused(
    tls_ldap_settings, tls_slapd, lab_pki, ldaps
):
    changes = {"ca_file": lab_pki.pki.rogue_root.cert_path}
    if ldaps:
        changes.update(url=tls_slapd.ldaps_url, start_tls=False)
    authenticator = LdapAuthenticator(tls_ldap_settings.model_copy(update=changes))
    with pytest.raises(DirectoryUnavailable):
        run(authenticator.authenticate("kimmj", DEMO_PASSWORD))
    authenticator.close()


def test_directory_reached_by_a_name_not_in_its_certificate_is_refused(tls_ldap_settings, tls_slapd):
    # The lab server certificate names 127.0.0.1 and localhost only.
    url = tls_slapd.ldaps_url.replace("127.0.0.1", "127.0.0.2")
    settings = tls_ldap_settings.model_copy(update={"url": url, "start_tls": False})
    authenticator = LdapAuthenticator(settings)
    with pytest.raises(DirectoryUnavailable):
        run(authenticator.authenticate("kimmj", DEMO_PASSWORD))
    authenticator.close()


def test_logins_and_revocation_checks_are_counted(certificate_settings, directory, lab_pki):
    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    logins = {"outcome": "success"}, {"outcome": "revoked"}
    checks = {"source": "ocsp", "result": "good"}, {"source": "ocsp", "result": "revoked"}
    before = [sample("vdi_certificate_logins_total", **x) for x in logins]
    before += [sample("vdi_certificate_revocation_checks_total", **x) for x in checks]
    authenticator = authenticator_for(certificate_settings, directory)
    run(authenticator.authenticate(lab_pki.pki.users["kimmj"].der))
    with pytest.raises(CertificateLoginRefused):
        run(authenticator.authenticate(lab_pki.pki.users["revoked"].der))
    authenticator.close()
    after = [sample("vdi_certificate_logins_total", **x) for x in logins]
    after += [sample("vdi_certificate_revocation_checks_total", **x) for x in checks]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]


def test_san_upn_maps_to_a_directory_attribute(certificate_settings, directory, lab_pki):
    authenticator = authenticator_for(certificate_settings, directory, mapping="san", san_type="upn")
    assert run(authenticator.authenticate(lab_pki.pki.users["upn"].der)).identity.username == "kimmj"
    with pytest.raises(CertificateLoginRefused, match="expected one upn subjectAltName, found 0"):
        run(authenticator.authenticate(lab_pki.pki.users["kimmj"].der))
    authenticator.close()
