"""/api/v1/admin/sessions/{id}/logoff: an administrator logs a user's desktop session off."""

from __future__ import annotations

from broker.web.apihandlers.base import AdminAPIHandler

SESSION_ID = r"[0-9a-f-]{1,36}"


class ForceLogoffAPIHandler(AdminAPIHandler):
    async def post(self, session_id: str) -> None:
        admin = self.require_admin()
        # The pool's kind still decides the desktop's fate: dedicated kept, floating destroyed.
        session = await self.desktops.end_session(session_id, admin.username, "force_logoff", self.client_ip)
        self.write_json(session.as_json())


default_handlers = [
    (rf"/api/v1/admin/sessions/({SESSION_ID})/logoff", ForceLogoffAPIHandler),
]
