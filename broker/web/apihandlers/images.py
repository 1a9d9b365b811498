"""/api/v1/images: the golden image catalog, read only, for administrators (`broker.admin_groups`).

Versions are built and imported with `vdi image build|import`; the API shows what the catalog holds so
an administrator can pick a version for a pool. Database reads run in the executor (Database.run).
"""

from __future__ import annotations

from broker import errors
from broker.image_catalog import Catalog, CatalogError, catalog, describe
from broker.web.apihandlers.base import AdminAPIHandler

IMAGE_NAME = r"[^/]{1,64}"


class ImageNotFound(errors.BrokerError):
    status = 404
    reason = "image_not_found"


class ImagesAPIHandler(AdminAPIHandler):
    async def get(self) -> None:
        self.require_admin()
        self.write_json({"images": await self.db.run(catalog)})


class ImageAPIHandler(AdminAPIHandler):
    async def get(self, name: str) -> None:
        self.require_admin()
        version = self.get_query_argument("version", None)

        try:
            self.write_json(await self.db.run(lambda session: describe(Catalog.show(session, name, version))))
        except CatalogError as exc:
            raise ImageNotFound(exc.message, field=exc.field) from None


default_handlers = [
    (r"/api/v1/images", ImagesAPIHandler),
    (rf"/api/v1/images/({IMAGE_NAME})", ImageAPIHandler),
]
