"""OCSP against a real `openssl ocsp` responder, then CRLs over HTTP, with the lab PKI."""

from __future__ import annotations

import asyncio
import os
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from monitoring.metrics import RevocationResult, RevocationSource
from sso.revocation import RevocationChecker, SourceFailed, verify_ocsp_response
from tests.fixtures.common import free_port
from vdi.lab.ocsp import CrlServer


def check(settings, lab_pki, user: str):
    pki = lab_pki.pki
    checker = RevocationChecker(settings)
    try:
        return asyncio.run(checker.check(pki.users[user].cert, pki.intermediate.cert))
    finally:
        checker.close()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/"


@pytest.mark.parametrize(
    ("user", "result"), [("kimmj", RevocationResult.GOOD), ("revoked", RevocationResult.REVOKED)]
)
def test_ocsp_answers_from_the_certificates_aia(certificate_settings, lab_pki, user, result):
    answer = check(certificate_settings, lab_pki, user)
    assert (answer.source, answer.result) == (RevocationSource.OCSP, result)


@pytest.mark.parametrize(
    ("user", "result"), [("kimmj", RevocationResult.GOOD), ("revoked", RevocationResult.REVOKED)]
)
def test_crl_answers_when_the_responder_is_down(certificate_settings, lab_pki, user, result):
    settings = certificate_settings.model_copy(update={"ocsp_url": dead_url()})
    answer = check(settings, lab_pki, user)
    assert (answer.source, answer.result) == (RevocationSource.CRL, result)


def test_no_source_answers_is_an_error_naming_both(certificate_settings, lab_pki):
    settings = certificate_settings.model_copy(
        update={"ocsp_url": dead_url(), "crl_url": dead_url() + "x.crl"}
    )
    answer = check(settings, lab_pki, "kimmj")
    assert answer.result is RevocationResult.ERROR
    assert "ocsp:" in answer.detail and "crl:" in answer.detail


def test_a_crl_from_another_issuer_is_not_believed(certificate_settings, lab_pki, tmp_path):
    # The rogue CA's user points at the lab CRL, which the rogue root did not sign.
    pki = lab_pki.pki
    settings = certificate_settings.model_copy(update={"ocsp_url": dead_url()})
    checker = RevocationChecker(settings)
    answer = checker.check_blocking(pki.users["unknown-ca"].cert, pki.rogue_root.cert)
    checker.close()
    assert answer.result is RevocationResult.ERROR
    assert "another issuer" in answer.detail


def test_non_http_revocation_urls_are_refused(certificate_settings, lab_pki):
    settings = certificate_settings.model_copy(
        update={"ocsp_url": "file:///etc/passwd", "crl_url": "ftp://x/y.crl"}
    )
    answer = check(settings, lab_pki, "kimmj")
    assert answer.result is RevocationResult.ERROR
    assert "non-HTTP" in answer.detail


def real_response(lab_pki, user: str, nonce: bytes) -> ocsp.OCSPResponse:
    pki = lab_pki.pki
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        pki.users[user].cert,
        pki.intermediate.cert,
        hashes.SHA1(),  # noqa: S303 - the CertID hash responders accept
    )
    request = builder.add_extension(x509.OCSPNonce(nonce), critical=False).build()
    http_request = urllib.request.Request(
        lab_pki.ocsp.url, data=request.public_bytes(serialization.Encoding.DER), method="POST"
    )
    http_request.add_header("Content-Type", "application/ocsp-request")
    with urllib.request.urlopen(http_request, timeout=5) as reply:
        return ocsp.load_der_ocsp_response(reply.read())


def test_a_response_with_another_nonce_is_a_replay(lab_pki):
    pki = lab_pki.pki
    response = real_response(lab_pki, "kimmj", os.urandom(16))
    with pytest.raises(SourceFailed, match="nonce"):
        verify_ocsp_response(response, pki.users["kimmj"].cert, pki.intermediate.cert, os.urandom(16))


def test_a_response_for_another_ca_is_signed_by_an_unauthorised_responder(lab_pki):
    # The lab responder's certificate was issued by the intermediate, not by the rogue root.
    pki = lab_pki.pki
    nonce = os.urandom(16)
    response = real_response(lab_pki, "kimmj", nonce)
    with pytest.raises(SourceFailed, match="not issued by the certificate's CA"):
        verify_ocsp_response(response, pki.users["kimmj"].cert, pki.rogue_root.cert, nonce)


def test_a_real_response_with_our_nonce_verifies(lab_pki):
    pki = lab_pki.pki
    nonce = os.urandom(16)
    response = real_response(lab_pki, "kimmj", nonce)
    single = verify_ocsp_response(response, pki.users["kimmj"].cert, pki.intermediate.cert, nonce)
    assert single.certificate_status == ocsp.OCSPCertStatus.GOOD


def test_answers_are_cached_for_cache_s(certificate_settings, lab_pki):
    pki = lab_pki.pki
    settings = certificate_settings.model_copy(update={"cache_s": 60})
    checker = RevocationChecker(settings)

    async def twice():
        first = await checker.check(pki.users["kimmj"].cert, pki.intermediate.cert)
        # With the sources gone, only the cache can still answer.
        checker.settings = settings.model_copy(
            update={"ocsp_url": dead_url(), "crl_url": dead_url() + "x.crl"}
        )
        return first, await checker.check(pki.users["kimmj"].cert, pki.intermediate.cert)

    first, second = asyncio.run(twice())
    checker.close()
    assert first == second
    assert second.result is RevocationResult.GOOD


def test_a_crl_is_reused_until_its_next_update(certificate_settings, lab_pki):
    pki = lab_pki.pki
    server = CrlServer(pki.directory, 0)
    server.start()
    settings = certificate_settings.model_copy(update={"ocsp_url": dead_url(), "crl_url": server.url()})
    checker = RevocationChecker(settings)
    try:
        first = checker.check_blocking(pki.users["revoked"].cert, pki.intermediate.cert)
        server.stop()
        # The CRL's nextUpdate is a day away: no second download is needed, or possible.
        second = checker.check_blocking(pki.users["revoked"].cert, pki.intermediate.cert)
    finally:
        checker.close()
    assert first == second
    assert (second.source, second.result) == (RevocationSource.CRL, RevocationResult.REVOKED)
