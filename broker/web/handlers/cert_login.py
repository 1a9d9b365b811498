"""The portal's certificate sign-in: a page with one button, and its POST (broker/web/apihandlers/cert_login.py)."""

from __future__ import annotations

from broker import errors
from broker.login_security import TotpRequired
from broker.web.apihandlers.cert_login import certificate_login, certificate_method
from broker.web.handlers.login import LoginHandler, safe_next


class CertificateLoginHandler(LoginHandler):
    def render_page(self, error: str | None = None) -> None:
        self.render("cert_login.html", error=error, next_url=safe_next(self.get_argument("next", None)))

    def get(self) -> None:
        certificate_method(self)
        if self.current_user:
            self.redirect(safe_next(self.get_argument("next", None)))
            return
        self.remember_language()
        self.render_page()

    async def post(self) -> None:
        try:
            await certificate_login(self)
        except TotpRequired as exc:  # the second-factor policy covers certificate logins here
            self.render_totp_form(exc.pending)
            return
        except errors.LoginRefused as exc:
            self.set_status(exc.status)
            self.render_page(self.localized_message(exc))
            return
        # 303 so that reloading the next page does not post again.
        self.redirect(safe_next(self.get_argument("next", None)), status=303)


default_handlers = [
    (r"/login/certificate", CertificateLoginHandler),
]
