"""POST /api/v1/login/certificate: a portal session from the client certificate, no password.

The certificate comes from this TLS connection, or from a TLS-terminating proxy's header (URL-encoded PEM,
like nginx's $ssl_client_escaped_cert) when, and only when, the request comes from a configured trusted
proxy address; from anyone else the header is ignored and logged, never believed.
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import unquote

from broker import errors
from broker.auth import PortalUser
from broker.web.apihandlers.base import APIHandler
from broker.web.base import BaseHandler
from broker.web.openapi import USER, Operation, obj
from monitoring.metrics import CertificateLoginOutcome
from sso.base import AuthError
from sso.cert_auth import CertificateLogin, ClientCertificate
from sso.config import CertificateSettings
from sso.x509 import CertificateRefused

log = logging.getLogger("broker.cert_login")

# A PEM certificate chain is a few KiB; anything far larger is not one.
MAX_HEADER_CHARS = 64 * 1024


class CertificateLoginFailed(errors.LoginRefused):
    reason = "certificate_login_failed"
    message = (
        "Certificate login failed. Use a valid government (GPKI) certificate or sign in with a password."
    )


class CertificateStatusUnavailable(errors.LoginRefused):
    status = 503
    reason = "certificate_status_unavailable"
    message = "The certificate's revocation status could not be checked. Please try again shortly."


def certificate_method(handler: BaseHandler) -> CertificateLogin:
    # Routed only while the method is enabled (broker/web/app.py); this answers 404 should it not be.
    return handler.portal_auth.method(CertificateLogin.name)


def from_trusted_proxy(client_ip: str, settings: CertificateSettings) -> bool:
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(address in network for network in settings.trusted_proxies)


def presented_certificate(handler: BaseHandler, settings: CertificateSettings) -> bytes | None:
    """The proxy header's certificate from a trusted proxy, else the certificate of this TLS connection."""
    header = handler.request.headers.get(settings.proxy_header)
    if header is not None:
        # The TCP peer, not client_ip: what matters is who sent the header, not whom it forwards for.
        if from_trusted_proxy(handler.peer_ip, settings):
            if len(header) > MAX_HEADER_CHARS:
                raise CertificateRefused(f"{settings.proxy_header} header too large")
            return unquote(header).encode("utf-8", "replace")
        # A client forging the terminator's header: ignore it, but leave a trace for the operators.
        log.warning("ignored %s header from untrusted address %s", settings.proxy_header, handler.peer_ip)
    if handler.request.protocol != "https":
        return None  # plain HTTP (e.g. behind a proxy that sent no header): no certificate to take
    try:
        return handler.request.get_ssl_certificate(binary_form=True)
    except ValueError:  # the handshake carried no client certificate
        return None


def refusal(exc: AuthError) -> errors.LoginRefused:
    if getattr(exc, "outcome", None) is CertificateLoginOutcome.REVOCATION_UNAVAILABLE:
        return CertificateStatusUnavailable()
    if exc.status >= 500:
        return errors.DirectoryUnavailable()
    return CertificateLoginFailed()


async def certificate_login(handler: BaseHandler) -> PortalUser:
    """Log in by the presented certificate and replace the browser's portal session with a new one."""
    method = certificate_method(handler)
    portal_auth, client_ip = handler.portal_auth, handler.client_ip
    try:
        data = presented_certificate(handler, method.settings)
    except AuthError as exc:  # a proxy header too large to be a certificate
        await portal_auth.record_refusal(method.name, client_ip, exc, {})
        raise refusal(exc) from None
    old_session = handler.portal_session_id()
    try:
        user, session_id = await portal_auth.login(method.name, ClientCertificate(data), client_ip)
    except AuthError as exc:
        raise refusal(exc) from None
    await portal_auth.logout(old_session, client_ip)
    handler.set_portal_cookie(session_id)
    handler.current_user = user
    return user


class CertificateLoginAPIHandler(APIHandler):
    openapi = {
        "post": Operation(
            "loginCertificate",
            "Sign in with the TLS client certificate (when the certificate method is enabled)",
            obj("user", user=USER),
            auth="none",
            tags=("auth",),
        )
    }

    async def post(self) -> None:
        user = await certificate_login(self)
        self.write_json({"user": user.as_json()})


default_handlers = [
    (r"/api/v1/login/certificate", CertificateLoginAPIHandler),
]
