"""Certificate login: client certificate → validation → revocation → directory user with groups.

Order (each step a reason for the audit log, one message for the user): parse → validate the chain and the
leaf's rules (sso/x509.py) → OCSP, then CRL (sso/revocation.py; fail closed unless configured open) → map
to exactly one directory user (sso/cert_mapping.py), whose groups come from the directory as for password
login. The user must exist in the directory: a valid certificate alone opens nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from monitoring.metrics import CERTIFICATE_LOGINS, CertificateLoginOutcome, RevocationResult
from monitoring.metrics import LoginMethod as MethodLabel
from sso.base import AuthError, DirectoryUnavailable, Identity, InvalidCredentials
from sso.cert_mapping import CertificateMapping, mapping_for
from sso.config import CertificateSettings
from sso.ldap import LdapAuthenticator
from sso.login import LoginMethod
from sso.revocation import RevocationAnswer, RevocationChecker
from sso.x509 import (
    CertificateRefused,
    CertificateValidator,
    RevocationUnavailable,
    describe,
    load_pem_bundles,
    parse_certificate,
)

log = logging.getLogger("sso.cert_auth")


@dataclass(frozen=True)
class CertificateCheck:
    identity: Identity
    certificate: dict[str, str]  # serial and issuer, for the audit record
    reason: str


class CertificateLoginRefused(AuthError):
    """Wraps the refusal with what the audit needs: the certificate (when it parsed) and the metric outcome."""

    def __init__(
        self, cause: AuthError, certificate: dict[str, str], outcome: CertificateLoginOutcome
    ) -> None:
        super().__init__(cause.reason)
        self.status = cause.status
        self.public_message = cause.public_message
        self.certificate = certificate
        self.outcome = outcome


class CertificateAuthenticator:
    method = "certificate"

    def __init__(
        self,
        settings: CertificateSettings,
        directory: LdapAuthenticator,
        validator: CertificateValidator,
        revocation: RevocationChecker,
        mapping: CertificateMapping | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.validator = validator
        self.revocation = revocation
        self.mapping = mapping or mapping_for(settings)

    @classmethod
    def from_settings(
        cls, settings: CertificateSettings, directory: LdapAuthenticator
    ) -> CertificateAuthenticator:
        roots = load_pem_bundles(settings.trust_anchors)
        intermediates = load_pem_bundles(settings.intermediates)
        validator = CertificateValidator(roots, intermediates, settings.required_policies)
        return cls(settings, directory, validator, RevocationChecker(settings))

    def close(self) -> None:
        self.revocation.close()

    async def authenticate(self, data: bytes) -> CertificateCheck:
        """`data`: the client certificate, DER from the TLS layer or PEM from a trusted proxy's header."""
        certificate: dict[str, str] = {}
        outcome = CertificateLoginOutcome.INVALID
        try:
            cert = parse_certificate(data)
            certificate = describe(cert)
            validated = self.validator.validate(cert)
            answer = await self.revocation.check(validated.leaf, validated.issuer)
            outcome, reason = self._judge(answer)
            identity = await self._identity(cert)
        except AuthError as exc:
            outcome = _outcome_of(exc, outcome)
            CERTIFICATE_LOGINS.labels(outcome=outcome.value).inc()
            log.info("certificate login refused (%s): %s %s", outcome.value, certificate, exc.reason)
            raise CertificateLoginRefused(exc, certificate, outcome) from None
        CERTIFICATE_LOGINS.labels(outcome=outcome.value).inc()
        log.info("certificate login of %s (%s): %s", identity.username, reason, certificate)
        return CertificateCheck(identity, certificate, reason)

    def _judge(self, answer: RevocationAnswer) -> tuple[CertificateLoginOutcome, str]:
        if answer.result is RevocationResult.GOOD:
            return (
                CertificateLoginOutcome.SUCCESS,
                f"authenticated; revocation {answer.source.value}: {answer.detail}",
            )
        if answer.result is RevocationResult.ERROR:
            if self.settings.fail_mode == "open":
                # Allowed by explicit configuration only; the audit says so, so operators can review these.
                reason = f"authenticated with revocation UNCHECKED (fail_mode=open): {answer.detail}"
                return CertificateLoginOutcome.SUCCESS_FAIL_OPEN, reason
            raise RevocationUnavailable(f"revocation status unavailable (fail_mode=closed): {answer.detail}")
        raise _Revoked(f"certificate {answer.result.value} ({answer.source.value}): {answer.detail}")

    async def _identity(self, cert) -> Identity:
        try:
            return await self.mapping.identity(self.directory, cert)
        except InvalidCredentials as exc:
            raise _NoUser(
                f"no directory user for the certificate ({self.mapping.name} mapping): {exc.reason}"
            ) from None


@dataclass(frozen=True)
class ClientCertificate:
    """The certificate the client presented: DER from the TLS layer or PEM from a trusted proxy; None if none."""

    data: bytes | None


class CertificateLogin(LoginMethod):
    """The login method over `CertificateAuthenticator`: no password, so no lockout (the private key is
    the strong factor) and, by default, no second factor (`[totp] methods`)."""

    name = MethodLabel.CERTIFICATE.value
    counts_failures = False

    def __init__(self, checker: CertificateAuthenticator) -> None:
        self.checker = checker

    @property
    def settings(self) -> CertificateSettings:
        return self.checker.settings

    @classmethod
    def from_config(cls, config: Any, directory: LdapAuthenticator) -> CertificateLogin:
        return cls(CertificateAuthenticator.from_settings(config.certificate, directory))

    async def authenticate(self, credentials: ClientCertificate, audit: dict[str, str]) -> Identity:
        if not credentials.data:
            raise CertificateRefused("no client certificate presented")
        try:
            check = await self.checker.authenticate(credentials.data)
        except CertificateLoginRefused as exc:
            audit.update(exc.certificate)  # serial and issuer, when the certificate parsed
            raise
        audit.update({**check.certificate, "checks": check.reason})
        return check.identity

    def close(self) -> None:
        self.checker.close()


class _Revoked(CertificateRefused):
    pass


class _NoUser(CertificateRefused):
    pass


def _outcome_of(exc: AuthError, before: CertificateLoginOutcome) -> CertificateLoginOutcome:
    if isinstance(exc, RevocationUnavailable):
        return CertificateLoginOutcome.REVOCATION_UNAVAILABLE
    if isinstance(exc, _Revoked):
        return CertificateLoginOutcome.REVOKED
    if isinstance(exc, _NoUser):
        return CertificateLoginOutcome.NO_USER
    if isinstance(exc, DirectoryUnavailable):
        return CertificateLoginOutcome.DIRECTORY_ERROR
    return before
