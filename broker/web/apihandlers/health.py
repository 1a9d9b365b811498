"""/healthz and /metrics: for load balancers, process supervisors and Prometheus."""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from broker.web.apihandlers.base import APIHandler

log = logging.getLogger(__name__)


class HealthHandler(APIHandler):
    """200 when the broker can reach its database; 503 otherwise, so a balancer routes around it."""

    async def prepare(self) -> None:
        # Probes carry no cookie; skip the portal-session lookup.
        pass

    async def get(self) -> None:
        try:
            await self.db.run(lambda db: db.execute(text("SELECT 1")))
        except Exception as exc:
            log.warning("health check: database unavailable: %s", type(exc).__name__)
            self.write_json({"status": "unavailable", "database": type(exc).__name__}, status=503)
            return
        self.write_json({"status": "ok"})


class MetricsHandler(APIHandler):
    async def prepare(self) -> None:
        pass

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))


default_handlers = [
    (r"/healthz", HealthHandler),
    (r"/metrics", MetricsHandler),
]
