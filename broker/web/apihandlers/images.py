"""/api/v1/images: the golden image catalog, read only, for administrators (`broker.admin_groups`).

Versions are built and imported with `vdi image build|import`; the API shows what the catalog holds so
an administrator can pick a version for a pool. Database reads run in the executor (Database.run).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from broker import errors
from broker.image_catalog import Catalog, CatalogError, catalog, describe
from broker.web.apihandlers.base import AdminAPIHandler
from broker.web.openapi import IMAGE_VERSION, STR, Operation, array, nullable, obj

IMAGE_NAME = r"[^/]{1,64}"


class ImageNotFound(errors.BrokerError):
    status = 404
    reason = "image_not_found"


class ImageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(
        None, min_length=1, max_length=64, description="a version (unset: the newest)"
    )


class ImagesAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "listImages",
            "The golden image catalog with every version's checksum",
            obj(
                "images",
                images=array(
                    obj("name", "versions", name=STR, os=nullable(STR), versions=array(IMAGE_VERSION))
                ),
            ),
            auth="admin",
            tags=("images",),
            links={"getImage": {"name": "$response.body#/images/0/name"}},
        )
    }

    async def get(self) -> None:
        self.require_admin()
        self.write_json({"images": await self.db.run(catalog)})


class ImageAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "getImage",
            "One version of an image (the newest without ?version=)",
            IMAGE_VERSION,
            auth="admin",
            query=ImageQuery,
            path_params=("name",),
            tags=("images",),
        )
    }

    async def get(self, name: str) -> None:
        self.require_admin()
        version = self.parse_query(ImageQuery).version

        try:
            self.write_json(await self.db.run(lambda session: describe(Catalog.show(session, name, version))))
        except CatalogError as exc:
            raise ImageNotFound(exc.message, field=exc.field) from None


default_handlers = [
    (r"/api/v1/images", ImagesAPIHandler),
    (rf"/api/v1/images/({IMAGE_NAME})", ImageAPIHandler),
]
