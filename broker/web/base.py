"""The base of every broker handler: services, the logged-in user, language, errors, safe logs."""

from __future__ import annotations

import http
import logging
from functools import partial
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote, unquote_plus, urlencode

import tornado.web
from pydantic import BaseModel, ValidationError
from tornado.log import access_log

from broker import errors
from broker.auth import SESSION_COOKIE, PortalAuth, PortalUser, SessionUser, login_refusal
from broker.db import database_unavailable
from broker.terminals import fingerprint
from broker.web.client_address import HEADER as FORWARDED_FOR
from broker.web.client_address import PROTO_HEADER, client_address, client_scheme, peer_is_trusted
from broker.web.i18n import (
    LANGUAGE_NAMES,
    LANGUAGES,
    choose_language,
    code_label,
    error_message,
    other_language,
    translator,
)
from monitoring import logs
from monitoring.metrics import DATABASE_UNAVAILABLE_REFUSALS
from sso.base import AuthError
from sso.password import Password, PasswordLogin

if TYPE_CHECKING:
    from broker.config import BrokerConfig
    from broker.db import Database
    from broker.desktops import DesktopService

log = logging.getLogger("broker.web")
M = TypeVar("M", bound=BaseModel)

LANG_COOKIE = "lang"
MASK = "***"
# Query arguments whose values never reach a log line (principle 4); matched as substrings
# so that e.g. `access_token` and `new_password` are covered too.
SECRET_ARG_WORDS = ("token", "password", "passwd", "secret", "xsrf", "key", "ticket", "code")
QUIET_PATHS = ("/static/", "/novnc/", "/healthz", "/metrics")
# RFC 6797: browsers that saw the portal over https keep to https for a year.
HSTS = "max-age=31536000"


def same_site_path(path: str) -> str:
    """`path` as a link that can only lead to this site.

    A browser reads `//host/x` and `/\\host/x` as links to another host (the shape of OpenStack's
    CVE-2021-3654), so leading slashes and backslashes collapse into one slash; the rest is
    percent-encoded so it cannot end the attribute or start a query of its own.
    """
    rest = path.replace("\\", "/").lstrip("/")
    return "/" + quote(rest, safe="/-._~!$&'()*+,;=:@%")


def is_secret_arg(name: str) -> bool:
    name = unquote_plus(name).lower()
    return any(word in name for word in SECRET_ARG_WORDS)


def mask_uri(uri: str) -> str:
    """The URI with the values of secret-looking query arguments replaced by ***."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    pairs = []
    for pair in query.split("&"):
        name, eq, _value = pair.partition("=")
        pairs.append(f"{name}={MASK}" if eq and is_secret_arg(name) else pair)
    return f"{path}?{'&'.join(pairs)}"


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line, with secrets in the query string masked."""
    status = handler.get_status()
    request = handler.request
    if status < 400:
        # Static files, probes and scrapes would drown the lines operators read.
        level = logging.DEBUG if request.path.startswith(QUIET_PATHS) else logging.INFO
    else:
        level = logging.WARNING if status < 500 else logging.ERROR
    if not access_log.isEnabledFor(level):
        return
    access_log.log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        mask_uri(request.uri or ""),
        # The proxy-reported client where broker.trusted_proxies allows it, else the TCP peer.
        getattr(handler, "client_ip", request.remote_ip),
        1000.0 * request.request_time(),
    )


def error_for_status(status: int) -> errors.BrokerError:
    """A BrokerError standing in for a plain tornado HTTPError (404 route, 405 method, …)."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    error = errors.BrokerError(f"{phrase}.")
    error.status = status
    error.reason = phrase.lower().replace(" ", "_").replace("-", "_")
    return error


def as_broker_error(status: int, exc_info) -> errors.BrokerError:
    exc = exc_info[1] if exc_info else None
    if isinstance(exc, errors.BrokerError):
        return exc
    if exc is not None and database_unavailable(exc):
        # Degraded mode: the database is down or out of reach; say so at once (docs/database.md).
        DATABASE_UNAVAILABLE_REFUSALS.inc()
        return errors.DatabaseUnavailable()
    if status >= 500 and not isinstance(exc, tornado.web.HTTPError):
        # An unexpected exception: its text may hold anything, so the client gets none of it.
        return errors.BrokerError()
    return error_for_status(status)


class BaseHandler(tornado.web.RequestHandler):
    """Gives handlers the services, the portal user and the language; renders errors as pages."""

    # None: the configured default_language.
    fallback_language: str | None = None
    # True: prepare() does not read the portal session's user in a transaction of its own; the handler
    # hands `session_user()` to a service that reads it in the request's first transaction (and sets
    # current_user with `signed_in`). Only for handlers of signed-in users whose work starts with one.
    user_read_with_work = False

    @property
    def config(self) -> BrokerConfig:
        return self.settings["config"]

    @property
    def db(self) -> Database:
        return self.settings["db"]

    @property
    def portal_auth(self) -> PortalAuth:
        return self.settings["portal_auth"]

    @property
    def desktops(self) -> DesktopService:
        return self.settings["desktops"]

    @property
    def peer_ip(self) -> str:
        """The TCP peer: the client itself, or a reverse proxy in front of the broker."""
        return self.request.remote_ip or ""

    @property
    def client_scheme(self) -> str:
        """ "https" or "http" as the browser sees the portal (X-Forwarded-Proto from trusted proxies only)."""
        if not hasattr(self, "_client_scheme"):  # asked for by every header and cookie set
            self._client_scheme = client_scheme(
                self.peer_ip,
                self.request.protocol,
                self.request.headers.get(PROTO_HEADER),
                self.config.broker.trusted_proxies,
            )
        return self._client_scheme

    @property
    def client_ip(self) -> str:
        """The client's address: X-Forwarded-For only from broker.trusted_proxies (broker/web/client_address.py)."""
        if not hasattr(self, "_client_ip"):
            self._client_ip = client_address(
                self.peer_ip,
                self.request.headers.get(FORWARDED_FOR),
                self.config.broker.trusted_proxies,
            )
        return self._client_ip

    @property
    def request_id(self) -> str:
        """This request's id, in its log lines and its X-Request-Id response header (docs/logging.md).

        A trusted proxy's X-Request-Id is kept, so one id follows the request through the proxy's logs too;
        from anyone else the header would let a client plant ids in our logs, so a new one is made.
        """
        if not hasattr(self, "_request_id"):
            incoming = self.request.headers.get(logs.REQUEST_ID_HEADER)
            trusted = peer_is_trusted(self.peer_ip, self.config.broker.trusted_proxies)
            self._request_id = (
                incoming if trusted and logs.valid_request_id(incoming) else logs.new_request_id()
            )
            # Bound before the handler runs: the request's task (and any task it starts) inherits it.
            logs.bind(request_id=self._request_id, user=None, session=None)
        return self._request_id

    # -- user and cookies --------------------------------------------------------------------

    async def prepare(self) -> None:
        if self.user_read_with_work:
            self.current_user = None
            return
        self.current_user = await self.portal_auth.user_for(self.portal_session_id())
        logs.bind(user=self.current_user.username if self.current_user else None)

    def session_user(self) -> SessionUser:
        """This request's portal session, for a service to read its user in its first transaction;
        NotAuthenticated at once without a session cookie."""
        who = SessionUser(self.portal_session_id())
        if who.id_hash is None:
            raise errors.NotAuthenticated()
        return who

    def signed_in(self, who: SessionUser) -> PortalUser:
        """The user a service read for `who` (its first transaction succeeded), now this request's user."""
        assert who.user is not None
        self.current_user = who.user
        logs.bind(user=who.user.username)
        return who.user

    def get_current_user(self) -> PortalUser | None:
        # prepare() sets the user; this only runs when an error cut the request short before it.
        return None

    def portal_session_id(self) -> str | None:
        max_age_days = self.config.broker.session_lifetime_s / 86400
        value = self.get_signed_cookie(SESSION_COOKIE, max_age_days=max_age_days)
        return value.decode("ascii", "replace") if value else None

    def _cookie_flags(self) -> dict:
        # SameSite=Lax (RFC 6265bis) still sends the cookie on top-level navigation from a link,
        # so a bookmark works, while cross-site POSTs arrive without it.
        return {"path": "/", "httponly": True, "samesite": "Lax"}

    def set_cookie(self, name: str, value: str | bytes, *args, **kwargs) -> None:
        # Every cookie (session, _xsrf, language) is Secure whenever the browser reached the portal over
        # https, also through a TLS-terminating proxy (Guacamole's CVE-2018-1340 was a cookie without it).
        if self.client_scheme == "https":
            kwargs["secure"] = True
        super().set_cookie(name, value, *args, **kwargs)

    def set_portal_cookie(self, session_id: str) -> None:
        # No expiry: the cookie dies with the browser, which matters on shared center terminals;
        # the server-side expiry in portal_sessions bounds it in any case.
        self.set_signed_cookie(SESSION_COOKIE, session_id, expires_days=None, **self._cookie_flags())

    def clear_portal_cookie(self) -> None:
        self.clear_cookie(SESSION_COOKIE, **self._cookie_flags())

    def is_admin(self) -> bool:
        """Whether the signed-in user is in one of `broker.admin_groups` (names compare case-insensitively)."""
        if not self.current_user:
            return False
        admin_groups = {group.lower() for group in self.config.broker.admin_groups}
        return bool({group.lower() for group in self.current_user.groups} & admin_groups)

    def require_admin(self) -> PortalUser:
        if not self.current_user:
            raise errors.NotAuthenticated()
        if not self.is_admin():
            raise errors.Forbidden(
                "This needs a member of an administrator group (broker.admin_groups).",
                setting="broker.admin_groups",
            )
        return self.current_user

    async def start_portal_session(self, username: str, password: str) -> PortalUser:
        """Log in by password (see `log_in`)."""
        return await self.log_in(PasswordLogin.name, Password(username, password))

    async def log_in(self, method: str, credentials: object) -> PortalUser:
        """Log in by an enabled login method and replace whatever session cookie the browser had with a
        brand-new one. A refusal becomes the generic broker error (broker.auth.login_refusal)."""
        await self.portal_auth.logout(self.portal_session_id(), self.client_ip)
        try:
            user, session_id = await self.portal_auth.login(
                method, credentials, self.client_ip, device=self.device_certificate()
            )
        except AuthError as exc:
            raise login_refusal(exc) from None
        self.set_portal_cookie(session_id)
        self.current_user = user
        logs.bind(user=user.username)
        return user

    def device_certificate(self) -> bytes | None:
        """The TLS client certificate of this connection (DER; a center terminal's device certificate),
        already checked by the TLS layer against `broker.tls_client_ca`; None over HTTP or without one."""
        if self.request.protocol != "https":
            return None
        try:
            return self.request.get_ssl_certificate(binary_form=True)
        except ValueError:
            return None

    def device_fingerprint(self) -> str | None:
        """SHA-256 of `device_certificate()`: what registered terminals are known by (broker/terminals.py)."""
        device = self.device_certificate()
        return None if device is None else fingerprint(device)

    async def end_portal_session(self) -> None:
        await self.portal_auth.logout(self.portal_session_id(), self.client_ip)
        self.clear_portal_cookie()
        self.current_user = None

    def check_xsrf_cookie(self) -> None:
        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            raise errors.CsrfFailed() from None

    def parse_query(self, model: type[M]) -> M:
        """The query string's arguments (the last of each, `lang` aside) as `model`; a 400 naming the field."""
        arguments = {
            name: values[-1].decode("utf-8", "replace")
            for name, values in self.request.query_arguments.items()
            if name != "lang" and values and values[-1]
        }
        for name, value in arguments.items():
            if "\x00" in value:  # no field takes one, and PostgreSQL cannot store it
                raise errors.InvalidField(f"{name}: must not contain a NUL character", field=name)
        try:
            return model.model_validate(arguments)
        except ValidationError as exc:
            raise errors.invalid_field(exc) from None

    # -- language ------------------------------------------------------------------------------

    @property
    def lang(self) -> str:
        if not hasattr(self, "_lang"):
            self._lang = choose_language(
                self.get_query_argument("lang", None),
                self.get_cookie(LANG_COOKIE),
                self.request.headers.get("Accept-Language"),
                self.fallback_language or self.config.broker.default_language,
            )
        return self._lang

    def remember_language(self) -> None:
        """A `?lang=` choice sticks for later pages through a cookie."""
        chosen = self.get_query_argument("lang", None)
        if chosen in LANGUAGES and chosen != self.get_cookie(LANG_COOKIE):
            self.set_cookie(LANG_COOKIE, chosen, path="/", expires_days=365, samesite="Lax")

    def language_switch_url(self) -> str:
        """This page in the other language, keeping its other query arguments (e.g. ?next=)."""
        args = [
            (name, value.decode("utf-8", "replace"))
            for name, values in self.request.query_arguments.items()
            if name != "lang"
            for value in values
        ]
        args.append(("lang", other_language(self.lang)))
        return f"{same_site_path(self.request.path)}?{urlencode(args)}"

    def get_template_namespace(self) -> dict:
        namespace = super().get_template_namespace()
        other = other_language(self.lang)
        namespace.update(
            _=translator(self.lang),
            label=partial(code_label, self.lang),
            lang=self.lang,
            other_lang=other,
            other_lang_name=LANGUAGE_NAMES[other],
            is_admin=self.is_admin(),
            lang_switch_url=self.language_switch_url(),
        )
        return namespace

    # -- headers, errors and logs --------------------------------------------------------------

    def set_default_headers(self) -> None:
        self.set_header(logs.REQUEST_ID_HEADER, self.request_id)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("Content-Security-Policy", self.settings.get("content_security_policy", ""))
        # Pages show who is logged in and their desktops; shared terminals must not cache them.
        self.set_header("Cache-Control", "no-store")
        if self.client_scheme == "https":
            self.set_header("Strict-Transport-Security", HSTS)

    def localized_message(self, error: errors.BrokerError) -> str:
        return error_message(self.lang, error.reason, error.message, error.params)

    def write_error(self, status_code: int, **kwargs) -> None:
        error = as_broker_error(status_code, kwargs.get("exc_info"))
        self.set_status(error.status)
        self.render("error.html", error=error, message=self.localized_message(error))

    def log_exception(self, typ, value, tb) -> None:
        # Tornado's own version logs the request with its full URI, query string and all.
        summary = f"{self.request.method} {mask_uri(self.request.uri or '')} ({self.client_ip})"
        if isinstance(value, errors.BrokerError):
            log.warning("%d %s: %s %s", value.status, summary, value.reason, value.message)
        elif isinstance(value, tornado.web.HTTPError):
            log.warning("%d %s: %s", value.status_code, summary, value.log_message or "")
        elif database_unavailable(value):
            # No traceback per request while the database is away; one line says why.
            log.warning("503 %s: database unavailable (%s)", summary, type(value).__name__)
        else:
            log.error("uncaught exception in %s", summary, exc_info=(typ, value, tb))


class PageNotFoundHandler(BaseHandler):
    """Any path no route matched."""

    async def prepare(self) -> None:
        await super().prepare()
        raise errors.NotFound()
