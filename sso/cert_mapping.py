"""From a validated certificate to the directory user it belongs to, by one of four configured rules.

- userCertificate: the directory holds the exact certificate in `userCertificate;binary` (RFC 4523).
- issuer_serial: the directory holds a certificate with this issuer and serial (certificateExactMatch).
- subject_dn: the subject DN, through a template or as is, is the user's DN.
- san: the e-mail address or the Microsoft UPN of the subjectAltName equals a directory attribute.

Each rule yields either a filter or a DN; the directory must hold exactly one user for it.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from ldap3.utils.conv import escape_filter_chars

from sso.base import Identity
from sso.config import CertificateSettings
from sso.ldap import LdapAuthenticator
from sso.x509 import CertificateRefused

# Microsoft's UPN otherName (1.3.6.1.4.1.311.20.2.3), as smart-card logon certificates carry it.
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


class CertificateMapping(ABC):
    name: str

    def __init__(self, settings: CertificateSettings) -> None:
        self.settings = settings

    @abstractmethod
    async def identity(self, directory: LdapAuthenticator, cert: x509.Certificate) -> Identity:
        """The one directory user of `cert`, with groups; InvalidCredentials when there is none or several."""


class UserCertificateMapping(CertificateMapping):
    name = "userCertificate"

    async def identity(self, directory: LdapAuthenticator, cert: x509.Certificate) -> Identity:
        # OpenLDAP matches userCertificate only by a certificateExactMatch assertion (issuer and serial), not by
        # the encoded value; the directory then returns the stored values and only a byte-exact one counts.
        der = cert.public_bytes(serialization.Encoding.DER)
        return await directory.identity_by_filter(issuer_serial_filter(cert), certificate=der)


class IssuerSerialMapping(CertificateMapping):
    name = "issuer_serial"

    async def identity(self, directory: LdapAuthenticator, cert: x509.Certificate) -> Identity:
        return await directory.identity_by_filter(issuer_serial_filter(cert))


class SubjectDnMapping(CertificateMapping):
    name = "subject_dn"

    async def identity(self, directory: LdapAuthenticator, cert: x509.Certificate) -> Identity:
        return await directory.identity_by_dn(self.user_dn(cert))

    def user_dn(self, cert: x509.Certificate) -> str:
        template = self.settings.subject_dn_template
        if not template:
            return cert.subject.rfc4514_string()
        values = {}
        for attribute in cert.subject:
            values.setdefault(attribute.rfc4514_attribute_name, _escape_rdn_value(str(attribute.value)))
        try:
            return string.Formatter().vformat(template, (), values)
        except (KeyError, IndexError) as exc:
            raise CertificateRefused(f"subject lacks {exc} needed by subject_dn_template") from None


class SanMapping(CertificateMapping):
    name = "san"

    async def identity(self, directory: LdapAuthenticator, cert: x509.Certificate) -> Identity:
        value = self.san_value(cert)
        attribute = self.settings.san_attribute
        return await directory.identity_by_filter(f"({attribute}={escape_filter_chars(value)})")

    def san_value(self, cert: x509.Certificate) -> str:
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise CertificateRefused("no subjectAltName to map the user by") from None
        if self.settings.san_type == "email":
            found = names.get_values_for_type(x509.RFC822Name)
        else:
            found = [
                _upn(other.value)
                for other in names.get_values_for_type(x509.OtherName)
                if other.type_id == UPN_OID
            ]
        if len(found) != 1:
            raise CertificateRefused(
                f"expected one {self.settings.san_type} subjectAltName, found {len(found)}"
            )
        return found[0]


def issuer_serial_filter(cert: x509.Certificate) -> str:
    # RFC 4523 §2.1 CertificateExactAssertion in GSER; inside a GSER string a quote is doubled.
    issuer = cert.issuer.rfc4514_string().replace('"', '""')
    assertion = f'{{ serialNumber {cert.serial_number}, issuer rdnSequence:"{issuer}" }}'
    return f"(userCertificate={escape_filter_chars(assertion)})"


def _upn(der: bytes) -> str:
    """The UTF8String inside the otherName value (short-form DER lengths: UPNs are short)."""
    if len(der) < 2 or der[0] != 0x0C or der[1] >= 0x80:
        raise CertificateRefused("malformed UPN in subjectAltName")
    return der[2 : 2 + der[1]].decode("utf-8", "replace")


def _escape_rdn_value(value: str) -> str:
    """RFC 4514 §2.4 escaping, so a crafted CN cannot add RDNs to the DN a template builds."""
    escaped = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if escaped.startswith(("#", " ")):
        escaped = "\\" + escaped
    return escaped[:-1] + "\\ " if escaped.endswith(" ") else escaped


MAPPINGS: dict[str, type[CertificateMapping]] = {
    m.name: m for m in (UserCertificateMapping, IssuerSerialMapping, SubjectDnMapping, SanMapping)
}


def mapping_for(settings: CertificateSettings) -> CertificateMapping:
    return MAPPINGS[settings.mapping](settings)
