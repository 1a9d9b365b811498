"""The lab's PKI: a GPKI-style hierarchy made with `cryptography`, for tests and the certificate-login demo.

root CA → intermediate CA → {OCSP responder, TLS server for 127.0.0.1/localhost, users}, plus a rogue root
that no configuration trusts. Users: a valid one per demo account asked for, and one of each way a
certificate can be wrong (revoked, expired, unknown CA, wrong policy, no clientAuth, no subject).
Everything is written as PEM into one directory, with the intermediate's CRL (DER) and an `openssl ocsp`
index.txt. Lab only: keys are unencrypted files.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

# An example certificate policy in the Korean GPKI arc (1.2.410.100001); real deployments configure the
# OIDs of their own certificate policy. The "wrong policy" user carries OTHER_POLICY_OID instead.
LAB_POLICY_OID = "1.2.410.100001.5.3.1.3"
OTHER_POLICY_OID = "1.2.410.200004.5.4.1.1"

# The bad users every test refers to by name.
BAD_USERS = ("revoked", "expired", "unknown-ca", "wrong-policy", "no-client-auth", "no-subject")

_DAY = dt.timedelta(days=1)
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


@dataclass
class Issued:
    """A certificate and its key, written as `<name>.pem` and `<name>.key`."""

    name: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


@dataclass
class LabPki:
    """Paths and objects of a built lab PKI."""

    directory: Path
    ocsp_url: str
    crl_url: str
    root: Issued
    intermediate: Issued
    rogue_root: Issued
    ocsp_responder: Issued
    server: Issued
    users: dict[str, Issued] = field(default_factory=dict)

    @property
    def roots_file(self) -> Path:
        return self.directory / "roots.pem"

    @property
    def intermediates_file(self) -> Path:
        return self.directory / "intermediates.pem"

    @property
    def chain_file(self) -> Path:
        """Root and intermediate together: the client CA bundle of a TLS server, the CA file of a client."""
        return self.directory / "ca-chain.pem"

    @property
    def crl_file(self) -> Path:
        return self.directory / "intermediate.crl"

    @property
    def index_file(self) -> Path:
        return self.directory / "index.txt"


def _name(common_name: str, uid: str | None = None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "KR"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Government of Korea"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
    if uid:
        attributes.append(x509.NameAttribute(NameOID.USER_ID, uid))
    return x509.Name(attributes)


def _builder(subject: x509.Name, issuer: x509.Name, key, not_before: dt.datetime, days: int):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + days * _DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _policies(oid: str) -> x509.CertificatePolicies:
    return x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier(oid), None)])


class _Factory:
    def __init__(self, directory: Path, now: dt.datetime) -> None:
        self.directory = directory
        self.now = now

    def ca(self, name: str, common_name: str, parent: Issued | None = None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(common_name)
        issuer_name, issuer_key = (parent.cert.subject, parent.key) if parent else (subject, key)
        builder = (
            _builder(subject, issuer_name, key, self.now - _DAY, 3650)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None if parent is None else 0), True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        )
        if parent is not None:
            builder = builder.add_extension(_aki(parent), critical=False)
        return self._write(name, builder.sign(issuer_key, hashes.SHA256()), key)

    def leaf(self, name: str, issuer: Issued, subject: x509.Name, extensions: list, **dates) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        not_before = dates.get("not_before", self.now - _DAY)
        builder = _builder(subject, issuer.cert.subject, key, not_before, dates.get("days", 365))
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(_aki(issuer), critical=False)
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return self._write(name, builder.sign(issuer.key, hashes.SHA256()), key)

    def _write(self, name: str, cert: x509.Certificate, key) -> Issued:
        cert_path, key_path = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return Issued(name, cert, key, cert_path, key_path)


def _aki(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _distribution(ocsp_url: str, crl_url: str) -> list:
    aia = x509.AuthorityInformationAccess(
        [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]
    )
    dp = x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None, None)]
    )
    return [(aia, False), (dp, False)]


def user_extensions(
    email: str,
    ocsp_url: str,
    crl_url: str,
    *,
    policy: str = LAB_POLICY_OID,
    client_auth: bool = True,
    upn: str | None = None,
) -> list:
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    return [
        (_key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage(usages), False),
        (_policies(policy), False),
        (x509.SubjectAlternativeName(_alt_names(email, upn)), False),
        *_distribution(ocsp_url, crl_url),
    ]


def _alt_names(email: str, upn: str | None) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.RFC822Name(email)]
    if upn:
        # Microsoft's UPN otherName (smart-card logon), value a DER UTF8String (short form: UPNs are short).
        encoded = upn.encode("utf-8")
        names.append(x509.OtherName(UPN_OID, bytes([0x0C, len(encoded)]) + encoded))
    return names


def build_lab_pki(
    directory: Path,
    ocsp_url: str,
    crl_url: str,
    users: tuple[str, ...] = ("kimmj",),
    mail_domain="mois.go.kr",
) -> LabPki:
    """Create the whole hierarchy in `directory`; user certificates point at `ocsp_url` and `crl_url`."""
    directory.mkdir(parents=True, exist_ok=True)
    factory = _Factory(directory, dt.datetime.now(dt.UTC).replace(microsecond=0))
    root = factory.ca("root-ca", "GPKI Lab Root CA")
    intermediate = factory.ca("intermediate-ca", "GPKI Lab Intermediate CA", parent=root)
    rogue = factory.ca("rogue-root-ca", "Untrusted Rogue CA")
    pki = LabPki(
        directory,
        ocsp_url,
        crl_url,
        root,
        intermediate,
        rogue,
        _ocsp_responder(factory, intermediate),
        _server(factory, intermediate),
    )
    for uid in users:
        pki.users[uid] = _user(factory, uid, intermediate, f"{uid}@{mail_domain}", ocsp_url, crl_url)
    if users:
        # The first user once more, named by a UPN only its subjectAltName carries (mapping "san", type "upn").
        upn = f"{users[0]}@{mail_domain}"
        extensions = user_extensions(f"upn@{mail_domain}", ocsp_url, crl_url, upn=upn)
        pki.users["upn"] = factory.leaf("upn", intermediate, _name("upn", "upn"), extensions)
    _bad_users(factory, pki, mail_domain)
    _write_bundles(pki)
    write_revocation_data(pki, revoked=[pki.users["revoked"]])
    return pki


def _user(factory: _Factory, uid: str, issuer: Issued, email: str, ocsp: str, crl: str, **kw) -> Issued:
    return factory.leaf(uid, issuer, _name(uid, uid), user_extensions(email, ocsp, crl, **kw))


def _bad_users(factory: _Factory, pki: LabPki, domain: str) -> None:
    ocsp, crl, issuer = pki.ocsp_url, pki.crl_url, pki.intermediate
    users = pki.users
    users["revoked"] = _user(factory, "revoked", issuer, f"revoked@{domain}", ocsp, crl)
    users["wrong-policy"] = _user(
        factory, "wrong-policy", issuer, f"wp@{domain}", ocsp, crl, policy=OTHER_POLICY_OID
    )
    users["no-client-auth"] = _user(
        factory, "no-client-auth", issuer, f"nca@{domain}", ocsp, crl, client_auth=False
    )
    users["unknown-ca"] = _user(factory, "unknown-ca", pki.rogue_root, f"kimmj@{domain}", ocsp, crl)
    expired = factory.now - 30 * _DAY
    users["expired"] = factory.leaf(
        "expired", issuer, _name("expired", "expired"), user_extensions(f"ex@{domain}", ocsp, crl),
        not_before=expired, days=10,
    )  # fmt: skip
    # An empty subject is legal only with a critical subjectAltName (RFC 5280 §4.1.2.6).
    extensions = user_extensions(f"kimmj@{domain}", ocsp, crl)
    extensions[3] = (extensions[3][0], True)
    users["no-subject"] = factory.leaf("no-subject", issuer, x509.Name([]), extensions)


def _ocsp_responder(factory: _Factory, issuer: Issued) -> Issued:
    # A delegated responder (RFC 6960 §4.2.2.2): issued by the CA it answers for, with id-kp-OCSPSigning.
    extensions = [
        (_key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), False),
        (x509.OCSPNoCheck(), False),
    ]
    return factory.leaf("ocsp-responder", issuer, _name("GPKI Lab OCSP Responder"), extensions)


def _server(factory: _Factory, issuer: Issued) -> Issued:
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))])
    extensions = [
        (_key_usage(digital_signature=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (san, False),
    ]
    return factory.leaf("server", issuer, _name("localhost"), extensions)


def _write_bundles(pki: LabPki) -> None:
    root = pki.root.cert_path.read_bytes()
    intermediate = pki.intermediate.cert_path.read_bytes()
    pki.roots_file.write_bytes(root)
    pki.intermediates_file.write_bytes(intermediate)
    pki.chain_file.write_bytes(intermediate + root)
    # The server presents its chain so clients that trust only the root can build the path.
    (pki.directory / "server-chain.pem").write_bytes(pki.server.cert_path.read_bytes() + intermediate)


def write_revocation_data(pki: LabPki, revoked: list[Issued]) -> None:
    """The intermediate's CRL (DER, next update in a day) and the `openssl ocsp` index of its users."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.intermediate.cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + _DAY)
        .add_extension(_aki(pki.intermediate), critical=False)
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
    )
    for issued in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(issued.cert.serial_number)
        builder = builder.add_revoked_certificate(
            entry.revocation_date(now - dt.timedelta(minutes=1)).build()
        )
    crl = builder.sign(pki.intermediate.key, hashes.SHA256())
    pki.crl_file.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    pki.index_file.write_text(_index(pki, {issued.cert.serial_number for issued in revoked}, now))
    # openssl ca/ocsp read index.txt.attr when present; without it they print a warning.
    (pki.directory / "index.txt.attr").write_text("unique_subject = no\n")


def _index(pki: LabPki, revoked: set[int], now: dt.datetime) -> str:
    """openssl's CA database: status, expiry, revocation time, serial (hex), file, subject; tab-separated."""
    lines = []
    for issued in [*pki.users.values(), pki.server, pki.ocsp_responder]:
        cert = issued.cert
        if cert.issuer != pki.intermediate.cert.subject:
            continue  # the rogue CA's users are unknown to the responder, as they would be in life
        expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
        serial = f"{cert.serial_number:X}"
        serial = serial if len(serial) % 2 == 0 else "0" + serial
        status, when = (
            ("R", (now - dt.timedelta(minutes=1)).strftime("%y%m%d%H%M%SZ"))
            if (cert.serial_number in revoked)
            else ("V", "")
        )
        subject = "/" + "/".join(cert.subject.rfc4514_string().split(",")[::-1]) if len(cert.subject) else "/"
        lines.append("\t".join([status, expiry, when, serial, "unknown", subject]))
    return "\n".join(lines) + "\n"
