"""Registered terminals of smart work centers: the shared PCs of a center, known by a device certificate
(mutual TLS, issued by the centers' CA) or, where configured, by their address.

The portal's TLS layer asks for a client certificate (`broker.tls_client_ca`) and checks it in the
handshake: chain, validity dates and purpose; an expired certificate or one from another CA ends the
handshake and is audited like a user certificate (broker/web/tls.py). A certificate that passes is
matched here by the SHA-256 of its DER encoding. A login on a center's terminal network from a device
that matches no registered terminal is allowed, limited (a booking is needed: no walk-in seat) or refused,
as the center's `unregistered_terminals` policy says (broker/reservations.py applies it).

The TLS layer consults no revocation list, so a registered terminal's certificate is checked for
revocation here at each login at the terminal (OCSP, then the CRL, as a user certificate is: sso/), with
`[terminals]`' sources and fail mode, whatever method the user signs in with.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from broker import errors
from broker.centers import CenterView, audit_change, load_center, network_holding
from broker.config import BrokerSettings, TerminalSettings
from broker.db.models import Terminal
from monitoring.metrics import RevocationResult
from sso.base import AuthError
from sso.config import CertificateSettings
from sso.revocation import RevocationChecker
from sso.x509 import CertificateValidator, load_pem_bundles, parse_certificate

log = logging.getLogger(__name__)

TERMINAL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class UnknownTerminal(errors.NotFound):
    reason = "unknown_terminal"
    message = "There is no such terminal."


class TerminalExists(errors.Conflict):
    reason = "terminal_exists"
    message = "A terminal with this name, address or certificate is already registered."


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class NewTerminal(BaseModel):
    """A terminal by its address, or by its device certificate (PEM)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TERMINAL_NAME)
    address: str | None = Field(None, max_length=64)
    certificate: str | None = Field(None, max_length=16384, description="the device certificate, PEM")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None

    @field_validator("certificate")
    @classmethod
    def _certificate(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            x509.load_pem_x509_certificate(value.encode("ascii", "replace"))
        except ValueError:
            raise ValueError("not a PEM certificate") from None
        return value

    @model_validator(mode="after")
    def _one_way(self) -> NewTerminal:
        if (self.address is None) == (self.certificate is None):
            raise ValueError("give either address or certificate")
        return self

    def cert(self) -> x509.Certificate | None:
        return None if self.certificate is None else x509.load_pem_x509_certificate(self.certificate.encode())


@dataclass(frozen=True)
class TerminalView:
    id: int
    center: str
    name: str
    address: str | None
    cert_sha256: str | None
    cert_subject: str

    @classmethod
    def of(cls, row: Terminal) -> TerminalView:
        return cls(row.id, row.center, row.name, row.address, row.cert_sha256, row.cert_subject)

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "center": self.center,
            "name": self.name,
            "address": self.address,
            "certificate_sha256": self.cert_sha256,
            "certificate_subject": self.cert_subject,
        }


def list_terminals(db: Session, center: str) -> list[TerminalView]:
    load_center(db, center)
    rows = db.scalars(select(Terminal).where(Terminal.center == center).order_by(Terminal.name))
    return [TerminalView.of(row) for row in rows]


def add_terminal(db: Session, center: str, new: NewTerminal, actor: str, client_ip: str) -> TerminalView:
    view = CenterView.of(load_center(db, center))
    if new.address is not None and network_holding(new.address, view.networks) is None:
        raise errors.InvalidField(
            f"address: {new.address} is on none of center {center}'s terminal networks", field="address"
        )
    cert = new.cert()
    digest = fingerprint(cert.public_bytes(Encoding.DER)) if cert is not None else None
    clash = db.scalars(
        select(Terminal).where(
            or_(
                (Terminal.center == center) & (Terminal.name == new.name),
                Terminal.address == new.address if new.address else False,
                Terminal.cert_sha256 == digest if digest else False,
            )
        )
    ).first()
    if clash is not None:
        raise TerminalExists(
            f"Terminal {clash.name} of {clash.center} has this name, address or certificate."
        )
    row = Terminal(
        center=center,
        name=new.name,
        address=new.address,
        cert_sha256=digest,
        cert_subject=cert.subject.rfc4514_string()[:512] if cert is not None else "",
    )
    db.add(row)
    db.flush()
    audit_change(
        db,
        actor,
        "terminal.add",
        f"{center}/{new.name}",
        client_ip,
        address=new.address,
        certificate_sha256=digest,
    )
    return TerminalView.of(row)


def remove_terminal(db: Session, center: str, name: str, actor: str, client_ip: str) -> None:
    row = db.scalars(select(Terminal).where(Terminal.center == center, Terminal.name == name)).first()
    if row is None:
        raise UnknownTerminal(f"Center {center} has no terminal named {name}.", field="name")
    db.delete(row)
    audit_change(db, actor, "terminal.remove", f"{center}/{name}", client_ip)


def identify(db: Session, center: str, client_ip: str, device: bytes | None) -> TerminalView | None:
    """The registered terminal a login comes from: by its device certificate first, else by its address."""
    if device is not None:
        row = db.scalars(
            select(Terminal).where(Terminal.center == center, Terminal.cert_sha256 == fingerprint(device))
        ).first()
        if row is not None:
            return TerminalView.of(row)
    row = db.scalars(select(Terminal).where(Terminal.center == center, Terminal.address == client_ip)).first()
    return None if row is None else TerminalView.of(row)


class DeviceCertificates:
    """Revocation of center terminals' device certificates: chain to `broker.tls_client_ca` (the TLS
    layer checked it already; the chain gives the issuer OCSP needs), then OCSP, then the CRL."""

    def __init__(
        self, validator: CertificateValidator, revocation: RevocationChecker, settings: TerminalSettings
    ) -> None:
        self.validator = validator
        self.revocation = revocation
        self.settings = settings

    @classmethod
    def from_settings(cls, broker: BrokerSettings, settings: TerminalSettings) -> DeviceCertificates | None:
        """None without `broker.tls_client_ca`: no device certificate ever reaches the broker then."""
        if broker.tls_client_ca is None:
            return None
        bundle = load_pem_bundles([broker.tls_client_ca])
        roots = [cert for cert in bundle if cert.subject == cert.issuer]
        others = [cert for cert in bundle if cert.subject != cert.issuer]
        validator = CertificateValidator(roots or bundle, others, [])
        sources = CertificateSettings(
            ocsp_url=settings.ocsp_url,
            crl_url=settings.crl_url,
            fail_mode=settings.fail_mode,
            cache_s=settings.cache_s,
            revocation_timeout_s=settings.revocation_timeout_s,
        )
        return cls(validator, RevocationChecker(sources), settings)

    async def refusal(self, device: bytes) -> str | None:
        """Why the device certificate (DER) is refused, e.g. "revoked (ocsp)"; None when it passes."""
        try:
            validated = self.validator.validate(parse_certificate(device))
            answer = await self.revocation.check(validated.leaf, validated.issuer)
        except AuthError as exc:
            return exc.reason
        if answer.allows:
            return None
        if answer.result is RevocationResult.ERROR and self.settings.fail_mode == "open":
            log.warning(
                "terminal certificate admitted, revocation UNCHECKED (fail_mode=open): %s", answer.detail
            )
            return None
        return f"{answer.result.value} ({answer.source.value}): {answer.detail}"

    def close(self) -> None:
        self.revocation.close()
