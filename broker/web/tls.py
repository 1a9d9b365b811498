"""The portal's HTTPS listener, and an audit of the client certificates its TLS layer refuses.

With `tls_client_ca` the portal asks for a client certificate but does not require one, so password
and certificate users share the port. OpenSSL checks a presented certificate during the handshake
(chain to `tls_client_ca`, validity dates, purpose clientAuth) and aborts the handshake when it fails;
such a connection never becomes an HTTP request. Python's `ssl` has no verify callback, but the
handshake's failure reaches the stream: `BrokerHTTPServer` waits for every TLS stream's handshake and,
when OpenSSL refused the client's certificate, audits a failed certificate login with the source
address and OpenSSL's reason (`certificate has expired`, `unable to get local issuer certificate`,
`unsuitable certificate purpose`). The certificate itself is not available after a refused handshake,
so no serial or issuer is recorded. Other handshake failures (a scanner, a client that does not trust
the server's certificate) are not login attempts and are left to Tornado's log.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from functools import partial

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, SSLIOStream, StreamClosedError

from broker.auth import PortalAuth
from broker.config import BrokerSettings
from monitoring.metrics import CERTIFICATE_LOGINS, CertificateLoginOutcome
from sso.x509 import CertificateRefused

log = logging.getLogger(__name__)

HANDSHAKE_STAGE = "tls_handshake"


def tls_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """HTTPS for the portal; with a client CA, a client certificate is asked for but not required, so
    password and certificate users share the port (the application decides, sso/cert_auth.py)."""
    if settings.tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def refused_certificate(error: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The verification error behind a failed server-side handshake, if the client's certificate was it."""
    if isinstance(error, StreamClosedError):
        error = error.real_error
    return error if isinstance(error, ssl.SSLCertVerificationError) else None


class BrokerHTTPServer(HTTPServer):
    """Tornado's HTTPServer, auditing client certificates refused in the TLS handshake (module docstring)."""

    def initialize(self, *args, portal_auth: PortalAuth, **kwargs) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)
        self.portal_auth = portal_auth
        self._audits: set[asyncio.Task] = set()

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        if isinstance(stream, SSLIOStream):
            # The HTTP connection below drives the handshake; this only learns how it ended.
            stream.wait_for_handshake().add_done_callback(partial(self._handshake_done, address=address))
        super().handle_stream(stream, address)

    def _handshake_done(self, future: asyncio.Future, address: tuple | str) -> None:
        if future.cancelled():
            return
        refused = refused_certificate(future.exception())
        if refused is None:
            return
        client_ip = address[0] if isinstance(address, tuple) else str(address)
        task = asyncio.get_running_loop().create_task(self._audit(client_ip, refused))
        self._audits.add(task)
        task.add_done_callback(self._audits.discard)

    async def _audit(self, client_ip: str, refused: ssl.SSLCertVerificationError) -> None:
        CERTIFICATE_LOGINS.labels(outcome=CertificateLoginOutcome.REFUSED_IN_HANDSHAKE.value).inc()
        reason = f"refused in the TLS handshake: {refused.verify_message}"
        detail = {"stage": HANDSHAKE_STAGE, "verify_code": refused.verify_code}
        try:
            await self.portal_auth.record_refusal(
                "certificate", client_ip, CertificateRefused(reason), detail
            )
        except Exception:
            log.exception("cannot audit a certificate refused in the TLS handshake from %s", client_ip)

    async def drain_audits(self) -> None:
        """Wait for audits still being written (at shutdown, before the database closes)."""
        if self._audits:
            await asyncio.gather(*self._audits, return_exceptions=True)
