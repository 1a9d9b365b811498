"""/api/v1/login, /logout and /me: the portal session for scripts and the portal's own JavaScript."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from broker.apihandlers.base import APIHandler


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=128)
    # repr=False keeps the password out of any repr or log line that prints the request.
    password: str = Field(min_length=1, max_length=1024, repr=False)


class LoginAPIHandler(APIHandler):
    async def post(self) -> None:
        body = self.parse_body(LoginRequest)
        user = await self.start_portal_session(body.username, body.password)
        self.write_json({"user": user.as_json()})


class LogoutAPIHandler(APIHandler):
    async def post(self) -> None:
        await self.end_portal_session()
        self.write_json({"logged_out": True})


class MeAPIHandler(APIHandler):
    async def get(self) -> None:
        user = self.require_user()
        # Reading the token sets the _xsrf cookie, so a script can make its first POST after this.
        self.xsrf_token  # noqa: B018
        self.write_json({"user": user.as_json()})


default_handlers = [
    (r"/api/v1/login", LoginAPIHandler),
    (r"/api/v1/logout", LogoutAPIHandler),
    (r"/api/v1/me", MeAPIHandler),
]
