"""Certificate login end to end: the broker over HTTPS asking for client certificates, the real directory
over StartTLS holding the user's certificate, the real OCSP responder and CRL server of the lab PKI."""

from __future__ import annotations

import socket
import ssl
from urllib.parse import quote, urlsplit
from urllib.request import HTTPCookieProcessor, HTTPSHandler, build_opener

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from sso.cert_auth import CertificateAuthenticator
from sso.ldap import LdapAuthenticator
from tests.fixtures.broker import BrokerClient, UnreachableProvider, _NoRedirect, make_broker_config
from tests.fixtures.common import free_port, wait_until
from vdi.lab.slapd import DEMO_PASSWORD

GENERIC = "Certificate login failed. Use a valid government (GPKI) certificate or sign in with a password."
HEADER = "X-SSL-Client-Cert"


class TlsClient(BrokerClient):
    """BrokerClient over HTTPS, trusting the lab CA, presenting `user`'s certificate when given."""

    def __init__(self, base_url: str, pki, user: str | None = None) -> None:
        super().__init__(base_url)
        context = ssl.create_default_context(cafile=str(pki.chain_file))
        if user:
            context.load_cert_chain(pki.users[user].cert_path, pki.users[user].key_path)
        self._opener = build_opener(HTTPCookieProcessor(self.jar), _NoRedirect, HTTPSHandler(context=context))

    def certificate_login(self, headers=None):
        return self.post("/api/v1/login/certificate", headers=headers)


def start_broker(tmp_path, tls_broker, tls_ldap_settings, lab_pki, **certificate) -> tuple[str, Database]:
    pki = lab_pki.pki
    section = {
        "enabled": True,
        "trust_anchors": [str(pki.roots_file)],
        "intermediates": [str(pki.intermediates_file)],
        "required_policies": ["1.2.410.100001.5.3.1.3"],
        "cache_s": 0,
        **certificate,
    }
    ldap = tls_ldap_settings.model_dump(mode="json", exclude_none=True)
    broker = {
        "cookie_secret": "cert-login-tests-" + "0" * 32,
        "gateway_url": "ws://127.0.0.1:9/ws",
        "tls_cert": str(pki.directory / "server-chain.pem"),
        "tls_key": str(pki.server.key_path),
        "tls_client_ca": str(pki.chain_file),
    }
    config = make_broker_config(tmp_path / "broker.db", broker=broker, ldap=ldap, certificate=section)
    directory = LdapAuthenticator(config.ldap)
    url = tls_broker(
        config,
        authenticator=directory,
        providers={host.name: UnreachableProvider(host) for host in config.hosts},
        certificate_auth=CertificateAuthenticator.from_settings(config.certificate, directory),
    )
    return url, Database(config.database)


def login_audits(db: Database) -> list[AuditEvent]:
    with db.transaction() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "login").order_by(AuditEvent.id))
        return [(row.actor, row.result, dict(row.detail)) for row in rows]


@pytest.fixture
def broker(tmp_path, tls_broker, tls_ldap_settings, lab_pki):
    url, db = start_broker(tmp_path, tls_broker, tls_ldap_settings, lab_pki, trusted_proxies=["127.0.0.1"])
    yield url, db
    db.close()


def test_certificate_of_the_tls_connection_logs_the_user_in(broker, lab_pki):
    url, db = broker
    client = TlsClient(url, lab_pki.pki, "kimmj")
    response = client.certificate_login()
    assert response.status == 200, response.body
    assert response.json()["user"]["username"] == "kimmj"
    assert client.get("/api/v1/me").json()["user"]["groups"] == ["mois"]
    actor, result, detail = login_audits(db)[-1]
    assert (actor, result, detail["method"]) == ("kimmj", "success", "certificate")
    assert detail["serial"] == f"{lab_pki.pki.users['kimmj'].cert.serial_number:x}"
    assert "GPKI Lab Intermediate CA" in detail["issuer"]
    assert "ocsp" in detail["checks"]


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("revoked", "certificate revoked (ocsp)"),
        ("expired", "certificate expired at"),
        ("unknown-ca", "untrusted chain"),
        ("wrong-policy", "required certificate policy missing"),
        ("no-client-auth", "extendedKeyUsage lacks id-kp-clientAuth"),
        ("no-subject", "empty subject"),
    ],
)
def test_bad_certificates_from_the_proxy_are_refused_with_the_reason_audited(broker, lab_pki, user, reason):
    url, db = broker
    client = TlsClient(url, lab_pki.pki)
    pem = lab_pki.pki.users[user].cert_path.read_text()
    response = client.certificate_login(headers={HEADER: quote(pem)})
    assert response.status == 401
    assert response.json()["error"] == {"reason": "certificate_login_failed", "message": GENERIC}
    assert client.cookie("vdi_session") is None
    actor, result, detail = login_audits(db)[-1]
    assert (actor, result, detail["method"]) == ("", "failure", "certificate")
    assert reason in detail["reason"]
    assert detail["serial"] == f"{lab_pki.pki.users[user].cert.serial_number:x}"


def test_revoked_certificate_on_the_tls_connection_is_refused(broker, lab_pki):
    url, db = broker
    response = TlsClient(url, lab_pki.pki, "revoked").certificate_login()
    assert response.status == 401
    assert "revoked" in login_audits(db)[-1][2]["reason"]


def test_garbage_in_the_header_is_refused_and_nothing_is_written_but_the_audit(broker, lab_pki):
    url, db = broker
    client = TlsClient(url, lab_pki.pki)
    response = client.certificate_login(headers={HEADER: "%00not-a-certificate"})
    assert response.status == 401
    assert client.cookie("vdi_session") is None
    assert "malformed certificate" in login_audits(db)[-1][2]["reason"]


def test_header_from_an_untrusted_address_is_ignored(
    tmp_path, tls_broker, tls_ldap_settings, lab_pki, caplog
):
    url, db = start_broker(tmp_path, tls_broker, tls_ldap_settings, lab_pki)  # no trusted proxies
    pem = lab_pki.pki.users["kimmj"].cert_path.read_text()
    response = TlsClient(url, lab_pki.pki).certificate_login(headers={HEADER: quote(pem)})
    assert response.status == 401
    assert login_audits(db)[-1][2]["reason"] == "no client certificate presented"
    assert f"ignored {HEADER} header from untrusted address 127.0.0.1" in caplog.text
    db.close()


def test_revocation_unknown_fails_closed_by_default(tmp_path, tls_broker, tls_ldap_settings, lab_pki):
    dead = f"http://127.0.0.1:{free_port()}/"
    url, db = start_broker(
        tmp_path, tls_broker, tls_ldap_settings, lab_pki, ocsp_url=dead, crl_url=dead + "x.crl"
    )
    response = TlsClient(url, lab_pki.pki, "kimmj").certificate_login()
    assert response.status == 503
    assert response.json()["error"]["reason"] == "certificate_status_unavailable"
    assert "revocation status unavailable (fail_mode=closed)" in login_audits(db)[-1][2]["reason"]
    db.close()


def test_revocation_unknown_with_fail_open_is_allowed_and_audited(
    tmp_path, tls_broker, tls_ldap_settings, lab_pki
):
    dead = f"http://127.0.0.1:{free_port()}/"
    url, db = start_broker(
        tmp_path,
        tls_broker,
        tls_ldap_settings,
        lab_pki,
        ocsp_url=dead,
        crl_url=dead + "x.crl",
        fail_mode="open",
    )
    response = TlsClient(url, lab_pki.pki, "kimmj").certificate_login()
    assert response.status == 200
    actor, result, detail = login_audits(db)[-1]
    assert (actor, result) == ("kimmj", "success")
    assert "revocation UNCHECKED (fail_mode=open)" in detail["checks"]
    db.close()


def test_certificate_routes_are_absent_when_disabled(broker_url):
    response = BrokerClient(broker_url).post("/api/v1/login/certificate")
    assert response.status == 404


def test_browser_with_a_client_certificate_reaches_the_desktop_list(broker, lab_pki, browser):
    url, _db = broker
    user = lab_pki.pki.users["kimmj"]
    context = browser.new_context(
        locale="ko-KR",
        ignore_https_errors=True,
        client_certificates=[{"origin": url, "certPath": str(user.cert_path), "keyPath": str(user.key_path)}],
    )
    page = context.new_page()
    page.goto(f"{url}/login")
    page.get_by_role("link", name="인증서로 로그인").click()
    page.get_by_role("button", name="인증서로 로그인").click()
    page.wait_for_url(f"{url}/desktops")
    assert page.locator("li[data-pool='mois-office']").count() == 1
    assert "김민준" in page.content()
    context.close()


def test_plain_http_without_a_header_is_refused_cleanly(tmp_path, broker_server, slapd, lab_pki):
    pki = lab_pki.pki
    section = {
        "enabled": True,
        "trust_anchors": [str(pki.roots_file)],
        "intermediates": [str(pki.intermediates_file)],
    }
    config = make_broker_config(
        tmp_path / "plain.db", ldap=slapd.settings().model_dump(mode="json"), certificate=section
    )
    directory = LdapAuthenticator(config.ldap)
    url = broker_server(
        config,
        authenticator=directory,
        providers={host.name: UnreachableProvider(host) for host in config.hosts},
        certificate_auth=CertificateAuthenticator.from_settings(config.certificate, directory),
    )
    response = BrokerClient(url).post("/api/v1/login/certificate")
    assert response.status == 401
    assert response.json()["error"]["reason"] == "certificate_login_failed"
    db = Database(config.database)
    assert login_audits(db)[-1][2]["reason"] == "no client certificate presented"
    db.close()


def test_password_users_share_the_https_port_without_a_certificate(broker, lab_pki):
    url, db = broker
    client = TlsClient(url, lab_pki.pki)
    response = client.login("leesy", DEMO_PASSWORD)
    assert response.status == 200
    assert login_audits(db)[-1][:2] == ("leesy", "success")


def handshake(url: str, context: ssl.SSLContext) -> None:
    """A TLS handshake on a raw socket, then a read; the server's refusal of our certificate surfaces as an alert.

    Nothing is sent after the handshake: under TLS 1.3 the server judges the client's certificate after the
    client thinks the handshake is done, and a request sent meanwhile would sit unread in the server's socket
    when it closes, so the kernel would answer with a reset that can overtake the alert (seen under load).
    """
    host, port = urlsplit(url).hostname, urlsplit(url).port
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.recv(1)


def handshake_audits(db: Database) -> list:
    return [row for row in login_audits(db) if row[2].get("stage") == "tls_handshake"]


@pytest.mark.parametrize(
    ("user", "alert", "reason"),
    [
        ("expired", "CERTIFICATE_EXPIRED", "certificate has expired"),
        ("unknown-ca", "UNKNOWN_CA", "unable to get local issuer certificate"),
        ("no-client-auth", "UNSUPPORTED_CERTIFICATE", "unsuitable certificate purpose"),
    ],
)
def test_certificates_refused_in_the_tls_handshake_are_audited(broker, lab_pki, user, alert, reason):
    url, db = broker
    outcome = {"outcome": "refused_in_handshake"}
    before = REGISTRY.get_sample_value("vdi_certificate_logins_total", outcome)
    # A client that does not trust the server's certificate ends the handshake too; that is no login attempt.
    with pytest.raises(ssl.SSLError):
        handshake(url, ssl.create_default_context())
    pki = lab_pki.pki
    context = ssl.create_default_context(cafile=str(pki.chain_file))
    context.load_cert_chain(pki.users[user].cert_path, pki.users[user].key_path)
    with pytest.raises(ssl.SSLError, match=alert):
        handshake(url, context)

    ((actor, result, detail),) = wait_until(lambda: handshake_audits(db), 10, "the refused handshake's audit")
    assert (actor, result, detail["method"]) == ("", "failure", "certificate")
    assert detail["reason"] == f"refused in the TLS handshake: {reason}"
    assert REGISTRY.get_sample_value("vdi_certificate_logins_total", outcome) == before + 1
    with db.transaction() as session:
        (source,) = session.scalars(select(AuditEvent.source_ip).where(AuditEvent.action == "login")).all()
    assert source == "127.0.0.1"


def test_the_second_factor_wraps_certificate_login_when_the_policy_names_it(
    tmp_path, tls_broker, tls_ldap_settings, lab_pki
):
    """`[totp] methods` lists certificate: from outside the centers a valid certificate alone opens nothing.

    No CertificateAuthenticator is handed to the app here: it builds the method from the registry by name,
    as `vdi broker` does."""
    pki = lab_pki.pki
    section = {
        "enabled": True,
        "trust_anchors": [str(pki.roots_file)],
        "intermediates": [str(pki.intermediates_file)],
        "cache_s": 0,
    }
    broker = {
        "cookie_secret": "cert-login-tests-" + "0" * 32,
        "gateway_url": "ws://127.0.0.1:9/ws",
        "tls_cert": str(pki.directory / "server-chain.pem"),
        "tls_key": str(pki.server.key_path),
        "tls_client_ca": str(pki.chain_file),
        "login_methods": ["password", "certificate"],
    }
    totp = {"required_outside_centers": True, "center_networks": ["10.0.0.0/8"], "methods": ["certificate"]}
    ldap = tls_ldap_settings.model_dump(mode="json", exclude_none=True)
    config = make_broker_config(
        tmp_path / "broker.db", broker=broker, ldap=ldap, certificate=section, totp=totp
    )
    directory = LdapAuthenticator(config.ldap)
    url = tls_broker(
        config, authenticator=directory, providers={h.name: UnreachableProvider(h) for h in config.hosts}
    )
    db = Database(config.database)

    response = TlsClient(url, pki, "kimmj").certificate_login()
    assert (response.status, response.json()["error"]["reason"]) == (403, "totp_enrolment_required")
    actor, result, detail = login_audits(db)[-1]
    assert (actor, result, detail["method"]) == ("kimmj", "failure", "certificate")
    assert detail["reason"] == "certificate ok; no TOTP enrolled, enrolment only inside a center"
    assert detail["serial"] == f"{pki.users['kimmj'].cert.serial_number:x}"
    # Password is not in [totp] methods here: it signs in from the same address without a code.
    assert TlsClient(url, pki).login("leesy", DEMO_PASSWORD).status == 200
    db.close()
