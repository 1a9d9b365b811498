"""The sign-in form and sign-out button of the portal."""

from __future__ import annotations

from urllib.parse import urlsplit

import tornado.web
from tornado.httputil import url_concat

from broker import errors
from broker.login_security import PendingLoginExpired, SourceLocked, TotpRequired
from broker.web.base import BaseHandler
from broker.web.i18n import translate
from sso.password import PasswordLogin
from sso.totp import qr_data_uri

HOME = "/desktops"


def safe_next(value: str | None) -> str:
    """A local path to return to after login; anything else (another site, `//host`) goes home.

    Guards against open redirects (CWE-601) through a crafted ?next=.
    """
    if not value or not value.startswith("/") or value.startswith(("//", "/\\")):
        return HOME
    parts = urlsplit(value)
    return HOME if parts.scheme or parts.netloc else value


class LoginHandler(BaseHandler):
    def render_form(self, username: str = "", error: str | None = None) -> None:
        # The _xsrf cookie comes with the sign-in page even when it shows no password form (password
        # login disabled), for the forms and scripts of the other login methods.
        self.xsrf_token  # noqa: B018
        self.render(
            "login.html", username=username, error=error, next_url=safe_next(self.get_argument("next", None))
        )

    def get(self) -> None:
        if self.current_user:
            self.redirect(safe_next(self.get_argument("next", None)))
            return
        self.remember_language()
        self.render_form()

    async def post(self) -> None:
        self.portal_auth.method(PasswordLogin.name)  # 404 when password login is disabled
        username = self.get_body_argument("username", "")
        try:
            await self.start_portal_session(username, self.get_body_argument("password", ""))
        except TotpRequired as exc:
            self.render_totp_form(exc.pending)
            return
        except errors.LoginRefused as exc:
            self.refused(exc)
            self.render_form(username, self.localized_message(exc))
            return
        # 303: the browser follows with a GET, so reloading the next page does not resubmit the password.
        self.redirect(safe_next(self.get_argument("next", None)), status=303)

    def render_totp_form(self, pending: str, error: str | None = None) -> None:
        next_url = safe_next(self.get_argument("next", None))
        self.render("totp.html", pending=pending, error=error, next_url=next_url)

    def refused(self, exc: errors.LoginRefused) -> None:
        self.set_status(exc.status)
        if isinstance(exc, SourceLocked):
            self.set_header("Retry-After", str(exc.retry_after_s))


class TotpLoginHandler(LoginHandler):
    """The second step of a login the second-factor policy holds (sso/second_factor.py): the code for a
    pending login, whichever method took the first step."""

    def get(self) -> None:
        self.redirect("/login")

    async def post(self) -> None:
        pending = self.get_body_argument("pending", "")[:128]
        await self.portal_auth.logout(self.portal_session_id(), self.client_ip)
        try:
            _user, session_id = await self.portal_auth.login_totp(
                pending, self.get_body_argument("code", "")[:16], self.client_ip
            )
        except (PendingLoginExpired, SourceLocked, errors.InvalidCredentials) as exc:
            self.refused(exc)
            self.render_form("", self.localized_message(exc))
            return
        except errors.LoginRefused as exc:
            self.refused(exc)
            self.render_totp_form(pending, self.localized_message(exc))
            return
        self.set_portal_cookie(session_id)
        self.redirect(safe_next(self.get_argument("next", None)), status=303)


class TotpEnrolHandler(BaseHandler):
    """Registering an authenticator app: signed in, and only from inside a smart work center."""

    def render_page(self, uri: str = "", message: str = "", done: bool = False) -> None:
        allowed = self.portal_auth.enrolment_allowed(self.client_ip)
        message = message or ("" if allowed else translate(self.lang, "enrol.not_here"))
        qr = qr_data_uri(uri) if uri else ""
        self.render("totp_enrol.html", allowed=allowed, uri=uri, qr=qr, message=message, done=done)

    @tornado.web.authenticated
    def get(self) -> None:
        self.render_page()

    @tornado.web.authenticated
    async def post(self) -> None:
        if not self.portal_auth.enrolment_allowed(self.client_ip):
            self.set_status(403)
            self.render_page()
            return
        code = self.get_body_argument("code", "")
        if not code:
            self.render_page(uri=await self.portal_auth.start_enrolment(self.current_user, self.client_ip))
            return
        try:
            await self.portal_auth.confirm_enrolment(self.current_user, code[:16], self.client_ip)
        except errors.LoginRefused as exc:
            self.set_status(exc.status)
            self.render_page(message=self.localized_message(exc))
            return
        self.render_page(message=translate(self.lang, "enrol.done"), done=True)


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        await self.portal_auth.sign_out(self.portal_session_id(), self.client_ip)
        await self.end_portal_session()
        # A kiosk signs out to the sign-in page that leads the next user back to it (`next=/kiosk`).
        back = self.get_body_argument("next", None)
        self.redirect(
            "/login" if back is None else url_concat("/login", {"next": safe_next(back)}), status=303
        )


default_handlers = [
    (r"/login", LoginHandler),
    (r"/login/totp", TotpLoginHandler),
    (r"/totp/enrol", TotpEnrolHandler),
    (r"/logout", LogoutHandler),
]
