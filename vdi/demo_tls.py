"""HTTPS for `vdi demo`: a demo CA, the portal on https://, the gateway on wss://, and client certificates.

The demo CA is the lab PKI (vdi/lab/pki.py), made once under `<lab state dir>/demo-pki` and reused, so a
browser that imported it (and a user's PKCS#12 file) keeps working across demo runs. Each run:
- starts the lab OCSP responder for it (certificate login checks revocation, fail-closed),
- stores the demo users' certificates in the lab slapd (it starts from a fresh directory),
- writes `<lab state dir>/demo-https.toml`: the demo's configuration with the broker on HTTPS asking for an
  optional client certificate, the gateway on wss://, and [certificate] login enabled. The broker and the
  gateway run from that file.
Demo only: keys are unencrypted files and the PKCS#12 password is printed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import SecretStr

from vdi.config import Config
from vdi.lab.pki import LAB_POLICY_OID, build_lab_pki
from vdi.lab.slapd import Slapd, SlapdError

# A few demo users of different ministries (vdi/lab/slapd.py DEMO_USERS) get a client certificate.
CERT_USERS = ("kimmj", "choijw", "chohy")
# Printed in the banner and the docs: it only keeps a browser's import dialog happy. Demo only.
P12_PASSWORD = "demo-cert-1234"  # noqa: S105 - public by design
_READY = "ready"
_OCSP_PORT = "ocsp.port"


@dataclass(frozen=True)
class DemoTls:
    """The files of the demo PKI in `directory`."""

    directory: Path

    @property
    def ca_file(self) -> Path:
        """The root CA certificate a browser (or curl --cacert) trusts for the demo."""
        return self.directory / "root-ca.pem"

    @property
    def chain_file(self) -> Path:
        return self.directory / "ca-chain.pem"

    @property
    def server_chain(self) -> Path:
        return self.directory / "server-chain.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def ready(self) -> bool:
        return (self.directory / _READY).exists()

    def p12(self, uid: str) -> Path:
        return self.directory / f"{uid}.p12"

    def cert(self, uid: str) -> Path:
        return self.directory / f"{uid}.pem"

    def key(self, uid: str) -> Path:
        return self.directory / f"{uid}.key"

    def ocsp_port(self) -> int:
        return int((self.directory / _OCSP_PORT).read_text())

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts the demo CA (health checks)."""
        return ssl.create_default_context(cafile=str(self.ca_file))


def demo_tls(config: Config) -> DemoTls:
    return DemoTls(config.lab.state_dir / "demo-pki")


def _port_free(port: int) -> bool:
    # openssl ocsp binds every address, so test the wildcard address.
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def ensure_pki(config: Config) -> DemoTls:
    """The demo PKI: built on the first run (or when its user certificates are about to expire), else reused."""
    tls = demo_tls(config)
    if tls.ready and not _expiring(tls):
        return tls
    port = _free_port()
    base = f"http://127.0.0.1:{port}/"
    pki = build_lab_pki(tls.directory, base, base + "intermediate.crl", users=CERT_USERS)
    for uid in CERT_USERS:
        _write_p12(tls.p12(uid), uid, pki.users[uid], pki.intermediate.cert)
    (tls.directory / _OCSP_PORT).write_text(str(port))
    (tls.directory / _READY).write_text("built by vdi demo\n")
    return tls


def _expiring(tls: DemoTls) -> bool:
    cert = x509.load_pem_x509_certificate(tls.cert(CERT_USERS[0]).read_bytes())
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=1)


def _write_p12(path: Path, uid: str, issued, intermediate: x509.Certificate) -> None:
    # PBES1 3DES with SHA-1: the one PKCS#12 encryption every browser's and OS's import dialog reads.
    # Good enough for a demo whose password is printed; never for real keys.
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50000)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())  # noqa: S303 - see above
        .build(P12_PASSWORD.encode())
    )
    data = pkcs12.serialize_key_and_certificates(
        uid.encode(), issued.key, issued.cert, [intermediate], encryption
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def ocsp_port(tls: DemoTls) -> int:
    """The port the certificates name, unless something else took it since; the config names the one used."""
    port = tls.ocsp_port()
    return port if _port_free(port) else _free_port()


def start_ocsp(config: Config, tls: DemoTls, port: int):
    """`openssl ocsp` for the demo CA, from the PKI's own index (read back from its files)."""
    from vdi.lab.ocsp import OcspResponder

    responder = OcspResponder(_index_only_pki(tls), port, config.lab.state_dir / "demo-ocsp.log")
    responder.start()
    return responder


@dataclass(frozen=True)
class _Files:
    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class _IndexOnlyPki:
    """What OcspResponder reads of a LabPki: paths only, so a PKI built on an earlier run serves too."""

    index_file: Path
    intermediate: _Files
    ocsp_responder: _Files


def _index_only_pki(tls: DemoTls) -> _IndexOnlyPki:
    d = tls.directory
    return _IndexOnlyPki(
        d / "index.txt",
        _Files(d / "intermediate-ca.pem", d / "intermediate-ca.key"),
        _Files(d / "ocsp-responder.pem", d / "ocsp-responder.key"),
    )


def store_certificates(slapd: Slapd, tls: DemoTls) -> None:
    """Put each certificate user's certificate in their directory entry (mapping userCertificate)."""
    for uid in CERT_USERS:
        der = x509.load_pem_x509_certificate(tls.cert(uid).read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        try:
            slapd.add_certificate(uid, der)
        except SlapdError as exc:
            # A lab slapd that was already running (`vdi lab start`) keeps what an earlier demo stored.
            if "attributeOrValueExists" not in str(exc):
                raise


# -- the configuration the broker and gateway run with -------------------------------------------------


def _plain(value):
    """A model_dump value as TOML can hold it: secrets revealed (the file is private), paths as text."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items() if item is not None}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Path | ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


def https_origins(config: Config) -> list[str]:
    """The portal's https:// origins, for the gateway's Origin check."""
    port = config.broker.port
    hosts = [config.broker.listen_address, "127.0.0.1", "localhost"]
    # A wildcard listen address is no browser's origin.
    origins = [f"https://{host}:{port}" for host in hosts if host not in ("0.0.0.0", "::")]  # noqa: S104
    origins += [o.replace("http://", "https://", 1) for o in config.gateway.allowed_origins]
    return list(dict.fromkeys(origins))


def https_config(config: Config, tls: DemoTls, ocsp_port: int) -> dict:
    """The demo's configuration, as TOML data, with HTTPS, wss:// and certificate login switched on."""
    data = _plain(config.model_dump(mode="python", exclude_none=True))
    data["broker"].update(
        tls_cert=str(tls.server_chain),
        tls_key=str(tls.server_key),
        tls_client_ca=str(tls.chain_file),
        gateway_url=config.broker.gateway_url.replace("ws://", "wss://", 1),
    )
    data["gateway"].update(
        tls_cert=str(tls.server_chain), tls_key=str(tls.server_key), allowed_origins=https_origins(config)
    )
    data["certificate"].update(
        enabled=True,
        trust_anchors=[str(tls.directory / "roots.pem")],
        intermediates=[str(tls.directory / "intermediates.pem")],
        required_policies=[LAB_POLICY_OID],
        mapping="userCertificate",
        ocsp_url=f"http://127.0.0.1:{ocsp_port}/",
    )
    return data


def write_https_config(config: Config, tls: DemoTls, ocsp_port: int) -> Path:
    """`<lab state dir>/demo-https.toml`, readable by its owner only (it holds the cookie secret)."""
    path = config.lab.state_dir / "demo-https.toml"
    text = "# Written by `vdi demo` from its configuration file; rewritten at every start.\n"
    text += tomli_w.dumps(https_config(config, tls, ocsp_port))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def banner_lines(config: Config, tls: DemoTls) -> list[str]:
    users = ", ".join(CERT_USERS)
    return [
        f"  Demo CA: {tls.ca_file}",
        "    Trust it once for websites (Chromium: Settings → Privacy and security → Security → Manage",
        "    certificates → Authorities → Import; Firefox: Settings → Certificates → View Certificates →",
        f"    Authorities → Import), or use `curl --cacert {tls.ca_file}`.",
        f"  Certificate login (optional; passwords work too) for {users}:",
        *(f"    {tls.p12(uid)}" for uid in CERT_USERS),
        f"    PKCS#12 password (demo only): {P12_PASSWORD}",
        "    Import one under Manage certificates → Your certificates → Import, then choose",
        "    '인증서로 로그인 / Sign in with a certificate' on the login page.",
    ]
