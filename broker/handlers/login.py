"""The sign-in form and sign-out button of the portal."""

from __future__ import annotations

from urllib.parse import urlsplit

from broker import errors
from broker.web import BaseHandler

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
        username = self.get_body_argument("username", "")
        try:
            await self.start_portal_session(username, self.get_body_argument("password", ""))
        except errors.LoginRefused as exc:
            self.set_status(exc.status)
            self.render_form(username, self.localized_message(exc))
            return
        # 303: the browser follows with a GET, so reloading the next page does not resubmit the password.
        self.redirect(safe_next(self.get_argument("next", None)), status=303)


class LogoutHandler(BaseHandler):
    async def post(self) -> None:
        await self.end_portal_session()
        self.redirect("/login", status=303)


default_handlers = [
    (r"/login", LoginHandler),
    (r"/logout", LogoutHandler),
]
