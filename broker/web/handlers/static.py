"""noVNC's ES modules, served from the npm package so the console needs no build step."""

from __future__ import annotations

from pathlib import Path

import tornado.web

NOVNC_PATH = Path(__file__).resolve().parents[3] / "node_modules" / "@novnc" / "novnc"


class NoVNCHandler(tornado.web.StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        # Module imports carry no version query, so revalidate (ETag) rather than cache blindly.
        self.set_header("Cache-Control", "no-cache")


default_handlers = [
    (r"/novnc/(.*)", NoVNCHandler, {"path": str(NOVNC_PATH)}),
]
