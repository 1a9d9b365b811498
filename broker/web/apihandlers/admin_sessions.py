"""/api/v1/admin/users/{username}/…: an administrator signs a user out everywhere, or resets their TOTP."""

from __future__ import annotations

from broker import errors
from broker.signout import user_exists
from broker.web.apihandlers.base import AdminAPIHandler
from broker.web.openapi import BOOL, INT, STR, Operation, obj
from monitoring.metrics import SignOutCause

USERNAME = r"[^/]{1,128}"


class RevokeSessionsAPIHandler(AdminAPIHandler):
    openapi = {
        "post": Operation(
            "revokeUserSessions",
            "Sign a user out everywhere: portal sessions, pending logins, open consoles",
            obj(
                "username",
                "revoked",
                username=STR,
                revoked=obj("portal_sessions", "desktop_sessions", portal_sessions=INT, desktop_sessions=INT),
            ),
            auth="admin",
            path_params=("username",),
            tags=("admin",),
        )
    }

    async def post(self, username: str) -> None:
        admin = self.require_admin()
        if not await self.db.run(lambda db: user_exists(db, username)):
            raise errors.NotFound(f"There is no user {username!r} known to the broker.", field="username")
        revoked = await self.portal_auth.sign_out_user(
            username, admin.username, SignOutCause.ADMIN, self.client_ip
        )
        self.write_json({"username": username, "revoked": revoked.as_json()})


class TotpResetAPIHandler(AdminAPIHandler):
    """DELETE /api/v1/admin/users/{username}/totp: forget the user's authenticator app (lost phone)."""

    openapi = {
        "delete": Operation(
            "resetTotp",
            "Forget a user's authenticator app",
            obj("username", "totp_enrolled", username=STR, totp_enrolled=BOOL),
            auth="admin",
            path_params=("username",),
            tags=("admin",),
        )
    }

    async def delete(self, username: str) -> None:
        admin = self.require_admin()
        await self.portal_auth.reset_totp(username, admin.username, self.client_ip)
        self.write_json({"username": username, "totp_enrolled": False})


default_handlers = [
    (rf"/api/v1/admin/users/({USERNAME})/revoke-sessions", RevokeSessionsAPIHandler),
    (rf"/api/v1/admin/users/({USERNAME})/totp", TotpResetAPIHandler),
]
