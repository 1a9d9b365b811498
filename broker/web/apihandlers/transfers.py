"""/api/v1/transfers: requests to move a file or text between network zones (망연계, broker/transfers.py).

POST takes `{"to_zone", "reason", "text"}` or `{"to_zone", "reason", "filename", "content_base64"}`;
approvers list what waits for them at /api/v1/transfers/approvals and decide with
POST /api/v1/transfers/{id}/decision `{"approve", "note"}`; the requester fetches an approved one once
from GET /api/v1/transfers/{id}/content.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from pydantic import Field

from broker import errors
from broker.reservations import Reservations
from broker.transfers import Decision, NewTransfer, Transfers, TransferView
from broker.web.apihandlers.base import APIHandler
from broker.web.base import BaseHandler
from broker.web.openapi import STR, TRANSFER, Operation, array, obj

# Ids are 32-bit integer columns: a longer number is no transfer (404), never a database error.
TRANSFER_ID = r"[0-9]{1,9}"


class TransferBody(NewTransfer):
    content_base64: str | None = Field(None, description="the file's bytes, base64 (with `filename`)")


def decode(body: TransferBody) -> bytes | None:
    if body.content_base64 is None:
        return None
    try:
        return base64.b64decode(body.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidField("content_base64: not base64", field="content_base64") from None


class TransfersMixin:
    @property
    def transfers(self) -> Transfers:
        return self.settings["transfers"]

    async def client_zone(self: BaseHandler) -> str | None:
        reservations: Reservations = self.settings["reservations"]
        arrival = await reservations.arrival(self.client_ip, self.device_certificate())
        return None if arrival is None else arrival.zone


def content_disposition(filename: str) -> str:
    """An attachment header for any file name: an ASCII fallback, and the UTF-8 name (RFC 6266, RFC 8187)."""
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\%' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def send_content(handler: BaseHandler, view: TransferView, content: bytes) -> None:
    if view.kind == "text":
        handler.set_header("Content-Type", "text/plain; charset=UTF-8")
    else:
        handler.set_header("Content-Type", "application/octet-stream")
        handler.set_header("Content-Disposition", content_disposition(view.filename))
    handler.finish(content)


TRANSFERS = obj("transfers", transfers=array(TRANSFER))
TAGS = ("transfers",)


class TransfersAPIHandler(TransfersMixin, APIHandler):
    openapi = {
        "get": Operation("listMyTransfers", "My transfer requests", TRANSFERS, tags=TAGS),
        "post": Operation(
            "requestTransfer",
            "Ask to move a text or a file to the other network zone (from a center terminal)",
            TRANSFER,
            status=201,
            body=TransferBody,
            tags=TAGS,
            links={op: {"transfer_id": "$response.body#/id"} for op in ("decideTransfer", "transferContent")},
        ),
    }

    async def get(self) -> None:
        user = self.require_user()
        self.write_json({"transfers": [t.as_json() for t in await self.transfers.mine(user.username)]})

    async def post(self) -> None:
        user = self.require_user()
        body = self.parse_body(TransferBody)
        new = NewTransfer.model_validate(body.model_dump(exclude={"content_base64"}))
        view = await self.transfers.request(user, new, decode(body), await self.client_zone(), self.client_ip)
        self.write_json(view.as_json(), status=201)


class ApprovalsAPIHandler(TransfersMixin, APIHandler):
    openapi = {
        "get": Operation(
            "listTransferApprovals",
            "Transfer requests waiting for my decision",
            TRANSFERS,
            tags=TAGS,
            links={"decideTransfer": {"transfer_id": "$response.body#/transfers/0/id"}},
        )
    }

    async def get(self) -> None:
        user = self.require_user()
        self.write_json({"transfers": [t.as_json() for t in await self.transfers.pending_for(user)]})


class DecisionAPIHandler(TransfersMixin, APIHandler):
    openapi = {
        "post": Operation(
            "decideTransfer",
            "Approve or reject a transfer request waiting for me",
            TRANSFER,
            body=Decision,
            path_params=("transfer_id",),
            tags=TAGS,
        )
    }

    async def post(self, transfer_id: str) -> None:
        user = self.require_user()
        view = await self.transfers.decide(int(transfer_id), user, self.parse_body(Decision), self.client_ip)
        self.write_json(view.as_json())


class ContentAPIHandler(TransfersMixin, APIHandler):
    openapi = {
        "get": Operation(
            "transferContent",
            "An approved transfer's text or file, once, for its requester",
            {"type": "string", "format": "binary"},
            media_type="application/octet-stream",
            other_media={"text/plain": STR},
            path_params=("transfer_id",),
            tags=TAGS,
        )
    }

    async def get(self, transfer_id: str) -> None:
        user = self.require_user()
        view, content = await self.transfers.deliver(int(transfer_id), user.username, self.client_ip)
        send_content(self, view, content)


default_handlers = [
    (r"/api/v1/transfers", TransfersAPIHandler),
    (r"/api/v1/transfers/approvals", ApprovalsAPIHandler),
    (rf"/api/v1/transfers/({TRANSFER_ID})/decision", DecisionAPIHandler),
    (rf"/api/v1/transfers/({TRANSFER_ID})/content", ContentAPIHandler),
]
