"""Validation of a client certificate: chain to the configured anchors, dates, key usage, EKU, policies.

The path is built and its signatures, dates and CA constraints checked by cryptography's verifier
(`PolicyBuilder…build_client_verifier`). Its end-entity rules are those of the Web PKI, which government
user certificates need not follow (no SAN, for one), so the leaf is checked here instead, one rule per
function, each failure with a reason for the audit log: RFC 5280 §4.2.1.3 keyUsage digitalSignature,
§4.2.1.12 extendedKeyUsage id-kp-clientAuth, §4.2.1.4 certificatePolicies.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from sso.base import AuthError


class CertificateRefused(AuthError):
    """A certificate login refused; every cause shows the user the same words (no oracle for attackers)."""

    public_message = (
        "Certificate login failed. Use a valid government (GPKI) certificate or sign in with a password."
    )


class RevocationUnavailable(CertificateRefused):
    """No OCSP responder or CRL answered and fail_mode is closed."""

    status = 503
    public_message = "The certificate's status could not be checked. Please try again shortly."


@dataclass(frozen=True)
class ValidatedCertificate:
    leaf: x509.Certificate
    issuer: x509.Certificate
    chain: list[x509.Certificate]


def describe(cert: x509.Certificate) -> dict[str, str]:
    """Serial (hex) and issuer: what audit records name a certificate by."""
    return {"serial": f"{cert.serial_number:x}", "issuer": cert.issuer.rfc4514_string()}


def load_pem_bundles(paths: list[Path]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for path in paths:
        try:
            certs.extend(x509.load_pem_x509_certificates(Path(path).read_bytes()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"certificate bundle {path}: {exc}") from None
    return certs


def parse_certificate(data: bytes) -> x509.Certificate:
    """DER (from the TLS connection) or PEM (from a proxy header); garbage is refused with a reason."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateRefused("malformed certificate: neither DER nor PEM X.509") from None


class CertificateValidator:
    """Checks one leaf against `roots` (trust anchors), building paths through `intermediates`."""

    def __init__(
        self, roots: list[x509.Certificate], intermediates: list[x509.Certificate], policies: list[str]
    ) -> None:
        if not roots:
            raise ValueError("trust_anchors: no certificates found")
        self._store = Store(roots)
        self._intermediates = intermediates
        self._policies = [x509.ObjectIdentifier(oid) for oid in policies]

    def validate(self, leaf: x509.Certificate, now: dt.datetime | None = None) -> ValidatedCertificate:
        now = now or dt.datetime.now(dt.UTC)
        for check in (_check_subject, _check_dates, _check_key_usage, _check_client_auth):
            check(leaf, now)
        self._check_policies(leaf)
        chain = self._verified_chain(leaf, now)
        return ValidatedCertificate(leaf=leaf, issuer=chain[1], chain=chain)

    def _verified_chain(self, leaf: x509.Certificate, now: dt.datetime) -> list[x509.Certificate]:
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
            )
            .build_client_verifier()
        )
        try:
            return verifier.verify(leaf, self._intermediates).chain
        except VerificationError as exc:
            raise CertificateRefused(f"untrusted chain: {exc}") from None

    def _check_policies(self, leaf: x509.Certificate) -> None:
        if not self._policies:
            return
        present = {info.policy_identifier for info in _extension(leaf, x509.CertificatePolicies) or []}
        missing = [oid.dotted_string for oid in self._policies if oid not in present]
        if missing:
            raise CertificateRefused(f"required certificate policy missing: {', '.join(missing)}")


def _extension(cert: x509.Certificate, kind: type):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_subject(leaf: x509.Certificate, now: dt.datetime) -> None:
    if len(leaf.subject) == 0:
        raise CertificateRefused("certificate has an empty subject")


def _check_dates(leaf: x509.Certificate, now: dt.datetime) -> None:
    if now < leaf.not_valid_before_utc:
        raise CertificateRefused(f"certificate not valid before {leaf.not_valid_before_utc.isoformat()}")
    if now > leaf.not_valid_after_utc:
        raise CertificateRefused(f"certificate expired at {leaf.not_valid_after_utc.isoformat()}")


def _check_key_usage(leaf: x509.Certificate, now: dt.datetime) -> None:
    usage = _extension(leaf, x509.KeyUsage)
    # Absent keyUsage means "any usage" (RFC 5280 §4.2.1.3); present, it must allow signatures.
    if usage is not None and not usage.digital_signature:
        raise CertificateRefused("keyUsage lacks digitalSignature")


def _check_client_auth(leaf: x509.Certificate, now: dt.datetime) -> None:
    usages = _extension(leaf, x509.ExtendedKeyUsage)
    if usages is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise CertificateRefused("extendedKeyUsage lacks id-kp-clientAuth")
