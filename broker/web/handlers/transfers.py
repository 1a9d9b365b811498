"""Portal pages of transfer requests between network zones: /transfers (ask, see mine, fetch an approved
one) and /transfers/approvals (decide). Plain forms: a file goes up as a multipart upload."""

from __future__ import annotations

import tornado.web
from pydantic import ValidationError

from broker import errors
from broker.transfers import Decision, NewTransfer
from broker.web.apihandlers.transfers import TransfersMixin, send_content
from broker.web.base import BaseHandler


class TransfersPageHandler(TransfersMixin, BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.remember_language()
        await self.render_page(done=self.get_query_argument("requested", None))

    async def render_page(self, error=None, field=None, form=None, done=None) -> None:
        self.render(
            "transfers.html",
            transfers=await self.transfers.mine(self.current_user.username),
            client_zone=await self.client_zone(),
            limits=self.transfers.settings,
            form=form or {"to_zone": "internet"},
            error=error,
            error_field=field,
            done=done,
        )

    @tornado.web.authenticated
    async def post(self) -> None:
        form = {key: self.get_body_argument(key, "") for key in ("to_zone", "reason", "text")}
        upload = (self.request.files.get("file") or [None])[0]
        try:
            fields = {"to_zone": form["to_zone"], "reason": form["reason"].strip()}
            if upload is not None and upload.body:
                fields["filename"] = upload.filename
            elif form["text"]:
                fields["text"] = form["text"]
            try:
                new = NewTransfer.model_validate(fields)
            except ValidationError as exc:
                raise errors.invalid_field(exc) from None
            data = upload.body if upload is not None and upload.body else None
            view = await self.transfers.request(
                self.current_user, new, data, await self.client_zone(), self.client_ip
            )
        except errors.BrokerError as exc:
            self.set_status(exc.status)
            await self.render_page(self.localized_message(exc), exc.field, form)
            return
        self.redirect(f"/transfers?requested={view.id}", status=303)


class TransferContentHandler(TransfersMixin, BaseHandler):
    @tornado.web.authenticated
    async def get(self, transfer_id: str) -> None:
        view, content = await self.transfers.deliver(
            int(transfer_id), self.current_user.username, self.client_ip
        )
        send_content(self, view, content)


class ApprovalsPageHandler(TransfersMixin, BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        self.remember_language()
        pending = await self.transfers.pending_for(self.current_user)
        self.render(
            "transfer_approvals.html", pending=pending, decided=self.get_query_argument("decided", None)
        )

    @tornado.web.authenticated
    async def post(self) -> None:
        transfer_id = self.get_body_argument("id", "")
        if not transfer_id.isdigit() or len(transfer_id) > 18:
            raise errors.InvalidField("id: not a transfer request", field="id")
        decision = Decision(
            approve=self.get_body_argument("decision", "") == "approve",
            note=self.get_body_argument("note", "")[:512],
        )
        await self.transfers.decide(int(transfer_id), self.current_user, decision, self.client_ip)
        self.redirect(f"/transfers/approvals?decided={transfer_id}", status=303)


default_handlers = [
    (r"/transfers", TransfersPageHandler),
    (r"/transfers/approvals", ApprovalsPageHandler),
    (r"/transfers/([0-9]{1,9})/content", TransferContentHandler),
]
