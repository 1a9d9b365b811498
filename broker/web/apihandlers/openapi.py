"""/api/v1/openapi.json: the OpenAPI 3.1 description of this broker's /api/v1 (broker/web/openapi.py)."""

from __future__ import annotations

from broker.web.apihandlers.base import APIHandler
from broker.web.openapi import ANY_OBJECT, Operation


class OpenAPIHandler(APIHandler):
    openapi = {
        "get": Operation("getOpenAPI", "This document", ANY_OBJECT, auth="none", tags=("meta",)),
    }

    async def prepare(self) -> None:
        # Public, like any API description: no portal-session lookup.
        pass

    def get(self) -> None:
        self.write_json(self.settings["openapi"])


default_handlers = [
    (r"/api/v1/openapi.json", OpenAPIHandler),
]
