"""/healthz and /metrics: for load balancers, process supervisors and Prometheus."""

from __future__ import annotations

import logging

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from broker import errors
from broker.web.apihandlers.base import APIHandler
from monitoring.access import scrape_allowed

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
        leases = self.settings.get("leases")
        # Which background jobs this broker runs now (the others run them elsewhere, or nobody yet).
        self.write_json({"status": "ok", "leads": sorted(leases.held) if leases else []})


class MetricsHandler(APIHandler):
    async def prepare(self) -> None:
        # No portal session here; the scraper proves itself with the token or its address.
        settings = self.config.broker
        token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
        authorization = self.request.headers.get("Authorization")
        if not scrape_allowed(self.client_ip, authorization, token, settings.metrics_networks):
            raise errors.MetricsForbidden()

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(REGISTRY))


default_handlers = [
    (r"/healthz", HealthHandler),
    (r"/metrics", MetricsHandler),
]
