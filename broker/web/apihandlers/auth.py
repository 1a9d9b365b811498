"""/api/v1/login, /login/totp, /logout, /me and TOTP enrolment: the portal session for scripts and the portal's JS."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from broker import errors
from broker.auth import PortalUser
from broker.login_security import SourceLocked
from broker.web.apihandlers.base import APIHandler
from broker.web.openapi import BOOL, STR, USER, Operation, obj
from sso.password import PasswordLogin


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=128)
    # repr=False keeps the password out of any repr or log line that prints the request.
    password: str = Field(min_length=1, max_length=1024, repr=False)


class TotpLoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pending: str = Field(min_length=1, max_length=128, repr=False)
    code: str = Field(pattern=r"^[0-9]{6}$", repr=False)


class TotpCodeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[0-9]{6}$", repr=False)


class LoginSecurityHandler(APIHandler):
    """Login answers: 429 carries Retry-After; everything else renders as usual."""

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, SourceLocked):
            self.set_header("Retry-After", str(exc.retry_after_s))
        super().write_error(status_code, **kwargs)


class LoginAPIHandler(LoginSecurityHandler):
    openapi = {
        "post": Operation(
            "login",
            "Sign in with a password",
            obj("user", user=USER),
            auth="none",
            body=LoginRequest,
            tags=("auth",),
        )
    }

    async def post(self) -> None:
        self.portal_auth.method(PasswordLogin.name)  # 404 before reading the body when it is disabled
        body = self.parse_body(LoginRequest)
        user = await self.start_portal_session(body.username, body.password)
        self.write_json({"user": user.as_json()})


class LoginTotpAPIHandler(LoginSecurityHandler):
    openapi = {
        "post": Operation(
            "loginTotp",
            "Finish a sign-in with the authenticator app's code",
            obj("user", user=USER),
            auth="none",
            body=TotpLoginRequest,
            tags=("auth",),
        )
    }

    async def post(self) -> None:
        body = self.parse_body(TotpLoginRequest)
        await self.portal_auth.logout(self.portal_session_id(), self.client_ip)
        user, session_id = await self.portal_auth.login_totp(body.pending, body.code, self.client_ip)
        self.set_portal_cookie(session_id)
        self.current_user = user
        self.write_json({"user": user.as_json()})


class LogoutAPIHandler(APIHandler):
    openapi = {
        "post": Operation(
            "logout", "Sign out", obj("logged_out", logged_out=BOOL), auth="none", tags=("auth",)
        )
    }

    async def post(self) -> None:
        await self.portal_auth.sign_out(self.portal_session_id(), self.client_ip)
        await self.end_portal_session()
        self.write_json({"logged_out": True})


class MeAPIHandler(APIHandler):
    openapi = {"get": Operation("me", "The signed-in user", obj("user", user=USER), tags=("auth",))}

    async def get(self) -> None:
        user = self.require_user()
        # Reading the token sets the _xsrf cookie, so a script can make its first POST after this.
        self.xsrf_token  # noqa: B018
        self.write_json({"user": user.as_json()})


class TotpEnrolmentAPIHandler(APIHandler):
    """Start enrolment: only a signed-in user inside a smart work center gets a secret."""

    def require_enrolment_place(self) -> PortalUser:
        user = self.require_user()
        if not self.portal_auth.enrolment_allowed(self.client_ip):
            raise errors.Forbidden("A second factor can only be enrolled from a smart work center network.")
        return user

    openapi = {
        "post": Operation(
            "startTotpEnrolment",
            "Start enrolling an authenticator app (from a smart work center network)",
            obj("otpauth_uri", otpauth_uri=STR),
            status=201,
            tags=("auth",),
        )
    }

    async def post(self) -> None:
        user = self.require_enrolment_place()
        uri = await self.portal_auth.start_enrolment(user, self.client_ip)
        self.write_json({"otpauth_uri": uri}, status=201)


class TotpEnrolmentConfirmAPIHandler(TotpEnrolmentAPIHandler):
    openapi = {
        "post": Operation(
            "confirmTotpEnrolment",
            "Confirm the enrolment with a first code",
            obj("enrolled", enrolled=BOOL),
            body=TotpCodeRequest,
            tags=("auth",),
        )
    }

    async def post(self) -> None:
        user = self.require_enrolment_place()
        code = self.parse_body(TotpCodeRequest).code
        await self.portal_auth.confirm_enrolment(user, code, self.client_ip)
        self.write_json({"enrolled": True})


default_handlers = [
    (r"/api/v1/login", LoginAPIHandler),
    (r"/api/v1/login/totp", LoginTotpAPIHandler),
    (r"/api/v1/logout", LogoutAPIHandler),
    (r"/api/v1/me", MeAPIHandler),
    (r"/api/v1/totp/enrolment", TotpEnrolmentAPIHandler),
    (r"/api/v1/totp/enrolment/confirm", TotpEnrolmentConfirmAPIHandler),
]
