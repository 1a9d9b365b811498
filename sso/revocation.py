"""Is a validated certificate revoked? OCSP first (RFC 6960), then the CRL (RFC 5280 §5).

OCSP: the responder from the configuration or the certificate's AIA, a request with a fresh nonce (RFC 8954),
a response signed by the issuing CA or by a responder certificate that CA issued for id-kp-OCSPSigning
(RFC 6960 §4.2.2.2), fresh by thisUpdate/nextUpdate, and echoing our nonce (so it cannot be a replay).
CRL: from the configuration or the CRL distribution point, signed by the issuer, cached until its nextUpdate.
Answers are reused for `cache_s`. The HTTP requests block, so `check` runs them on a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from monitoring.metrics import REVOCATION_CHECKS, RevocationResult, RevocationSource
from sso.config import CertificateSettings

log = logging.getLogger("sso.revocation")

# Clocks of responder and broker differ a little; RFC 6960 §4.2.2.1 leaves the tolerance to local policy.
CLOCK_SKEW = dt.timedelta(minutes=5)
MAX_RESPONSE_BYTES = 10 * 1024 * 1024
MAX_CACHED_ANSWERS = 10_000


class SourceFailed(Exception):
    """One revocation source gave no usable answer; the message says why (for the audit log)."""


@dataclass(frozen=True)
class RevocationAnswer:
    result: RevocationResult
    source: RevocationSource
    detail: str

    @property
    def allows(self) -> bool:
        return self.result is RevocationResult.GOOD


class RevocationChecker:
    def __init__(self, settings: CertificateSettings, max_workers: int = 4) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sso-revocation")
        self._lock = threading.Lock()
        self._answers: dict[tuple[bytes, int], tuple[float, RevocationAnswer]] = {}
        self._crls: dict[str, x509.CertificateRevocationList] = {}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self, leaf: x509.Certificate, issuer: x509.Certificate) -> RevocationAnswer:
        key = (issuer.fingerprint(hashes.SHA256()), leaf.serial_number)
        cached = self._cached(key)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(self._executor, self.check_blocking, leaf, issuer)
        if answer.result is not RevocationResult.ERROR and self.settings.cache_s:
            self._remember(key, answer)
        return answer

    def _remember(self, key: tuple[bytes, int], answer: RevocationAnswer) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._answers) >= MAX_CACHED_ANSWERS:
                # Bounded: a logon storm of distinct certificates must not grow memory without end.
                self._answers = {k: v for k, v in self._answers.items() if v[0] > now}
            if len(self._answers) < MAX_CACHED_ANSWERS:
                self._answers[key] = (now + self.settings.cache_s, answer)

    def _cached(self, key: tuple[bytes, int]) -> RevocationAnswer | None:
        with self._lock:
            expires, answer = self._answers.get(key, (0.0, None))
        return answer if answer is not None and time.monotonic() < expires else None

    # --- on the worker thread -------------------------------------------------------------------------------

    def check_blocking(self, leaf: x509.Certificate, issuer: x509.Certificate) -> RevocationAnswer:
        failures = []
        for source, ask in ((RevocationSource.OCSP, self._ocsp), (RevocationSource.CRL, self._crl)):
            try:
                answer = ask(leaf, issuer)
            except SourceFailed as exc:
                REVOCATION_CHECKS.labels(source=source.value, result=RevocationResult.ERROR.value).inc()
                log.warning("%s check of serial %x failed: %s", source.value, leaf.serial_number, exc)
                failures.append(f"{source.value}: {exc}")
                continue
            REVOCATION_CHECKS.labels(source=source.value, result=answer.result.value).inc()
            return answer
        return RevocationAnswer(RevocationResult.ERROR, RevocationSource.NONE, "; ".join(failures))

    def _ocsp(self, leaf: x509.Certificate, issuer: x509.Certificate) -> RevocationAnswer:
        url = self.settings.ocsp_url or _access_location(leaf)
        if not url:
            raise SourceFailed("no OCSP responder configured or named in the certificate")
        nonce = os.urandom(16)
        request = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(leaf, issuer, hashes.SHA1())  # noqa: S303 - CertID hash every responder accepts
            .add_extension(x509.OCSPNonce(nonce), critical=False)
            .build()
        )
        body = self._http(url, request.public_bytes(serialization.Encoding.DER), "application/ocsp-request")
        try:
            response = ocsp.load_der_ocsp_response(body)
        except ValueError:
            raise SourceFailed(f"{url} sent no OCSP response") from None
        single = verify_ocsp_response(response, leaf, issuer, nonce)
        return _ocsp_answer(single, url)

    def _crl(self, leaf: x509.Certificate, issuer: x509.Certificate) -> RevocationAnswer:
        url = self.settings.crl_url or _distribution_point(leaf)
        if not url:
            raise SourceFailed("no CRL configured or named in the certificate")
        crl = self._fresh_crl(url, issuer)
        if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
            return RevocationAnswer(
                RevocationResult.REVOKED, RevocationSource.CRL, f"listed on the CRL at {url}"
            )
        return RevocationAnswer(
            RevocationResult.GOOD, RevocationSource.CRL, f"not listed on the CRL at {url}"
        )

    def _fresh_crl(self, url: str, issuer: x509.Certificate) -> x509.CertificateRevocationList:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            crl = self._crls.get(url)
        if crl is not None and crl.next_update_utc and now < crl.next_update_utc:
            return crl
        crl = _load_crl(self._http(url, None, None), url)
        check_crl(crl, issuer, now, url)
        with self._lock:
            self._crls[url] = crl
        return crl

    def _http(self, url: str, body: bytes | None, content_type: str | None) -> bytes:
        if urlsplit(url).scheme not in ("http", "https"):
            raise SourceFailed(f"refusing a non-HTTP revocation URL {url!r}")
        request = urllib.request.Request(url, data=body, method="POST" if body else "GET")  # noqa: S310
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=self.settings.revocation_timeout_s) as reply:  # noqa: S310
                return reply.read(MAX_RESPONSE_BYTES)
        except OSError as exc:
            raise SourceFailed(f"{url} unreachable: {exc}") from None


def _access_location(cert: x509.Certificate) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for description in aia:
        if description.access_method == AuthorityInformationAccessOID.OCSP:
            return description.access_location.value
    return None


def _distribution_point(cert: x509.Certificate) -> str | None:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return None
    for point in points:
        for name in point.full_name or []:
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
                ("http:", "https:")
            ):
                return name.value
    return None


def _ocsp_answer(single: ocsp.OCSPSingleResponse, url: str) -> RevocationAnswer:
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.GOOD:
        return RevocationAnswer(RevocationResult.GOOD, RevocationSource.OCSP, f"good at {url}")
    if status == ocsp.OCSPCertStatus.REVOKED:
        when = single.revocation_time_utc.isoformat() if single.revocation_time_utc else "unknown time"
        return RevocationAnswer(RevocationResult.REVOKED, RevocationSource.OCSP, f"revoked at {when} ({url})")
    return RevocationAnswer(
        RevocationResult.UNKNOWN, RevocationSource.OCSP, f"unknown to the responder {url}"
    )


# --- response checks (pure functions, so tests can feed them forged answers) -----------------------------


def verify_ocsp_response(
    response: ocsp.OCSPResponse, leaf: x509.Certificate, issuer: x509.Certificate, nonce: bytes
) -> ocsp.OCSPSingleResponse:
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise SourceFailed(f"responder answered {response.response_status.name}")
    signer = _ocsp_signer(response, issuer)
    _verify_signature(signer.public_key(), response.signature, response.tbs_response_bytes, response)
    _check_nonce(response, nonce)
    single = _single_for(response, leaf)
    _check_fresh(single.this_update_utc, single.next_update_utc, dt.datetime.now(dt.UTC))
    return single


def _ocsp_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate) -> x509.Certificate:
    if _responder_is(response, issuer):
        return issuer
    for candidate in response.certificates:
        if not _responder_is(response, candidate):
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise SourceFailed("responder certificate not issued by the certificate's CA") from None
        usages = _eku(candidate)
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
            raise SourceFailed("responder certificate lacks id-kp-OCSPSigning")
        now = dt.datetime.now(dt.UTC)
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            raise SourceFailed("responder certificate outside its validity")
        return candidate
    raise SourceFailed("response signed by an unauthorised responder")


def _responder_is(response: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if response.responder_name is not None:
        return response.responder_name == cert.subject
    key_hash = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return response.responder_key_hash == key_hash


def _eku(cert: x509.Certificate) -> list:
    try:
        return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return []


def _verify_signature(public_key, signature: bytes, data: bytes, signed) -> None:
    algorithm = signed.signature_hash_algorithm
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        else:
            public_key.verify(signature, data)
    except InvalidSignature:
        raise SourceFailed("response signature does not verify") from None


def _check_nonce(response: ocsp.OCSPResponse, nonce: bytes) -> None:
    try:
        echoed = response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        raise SourceFailed("response does not echo the request nonce") from None
    if echoed != nonce:
        raise SourceFailed("response nonce differs from the request's (replayed answer?)")


def _single_for(response: ocsp.OCSPResponse, leaf: x509.Certificate) -> ocsp.OCSPSingleResponse:
    for single in response.responses:
        if single.serial_number == leaf.serial_number:
            return single
    raise SourceFailed("response does not cover the certificate")


def _check_fresh(this_update: dt.datetime, next_update: dt.datetime | None, now: dt.datetime) -> None:
    if this_update > now + CLOCK_SKEW:
        raise SourceFailed(f"answer from the future (thisUpdate {this_update.isoformat()})")
    if next_update is not None and next_update < now - CLOCK_SKEW:
        raise SourceFailed(f"stale answer (nextUpdate {next_update.isoformat()})")


def _load_crl(data: bytes, url: str) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise SourceFailed(f"{url} sent no CRL") from None


def check_crl(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: dt.datetime, url: str
) -> None:
    if crl.issuer != issuer.subject:
        raise SourceFailed(f"CRL at {url} is from another issuer")
    if not crl.is_signature_valid(issuer.public_key()):
        raise SourceFailed(f"CRL at {url} has a bad signature")
    _check_fresh(crl.last_update_utc, crl.next_update_utc, now)
