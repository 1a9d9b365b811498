"""The broker's Tornado application: routes, settings and security headers, nothing started.

`make_app` only builds; the services it hands to handlers are built and run by `broker.app.BrokerApp`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import tornado.web

from broker.config import BrokerConfig
from broker.web.apihandlers import admin_audit as admin_audit_api
from broker.web.apihandlers import admin_desktops as admin_desktops_api
from broker.web.apihandlers import admin_overview as admin_overview_api
from broker.web.apihandlers import admin_pools as admin_pools_api
from broker.web.apihandlers import admin_sessions as admin_sessions_api
from broker.web.apihandlers import attendance as attendance_api
from broker.web.apihandlers import auth as auth_api
from broker.web.apihandlers import centers as centers_api
from broker.web.apihandlers import cert_login as cert_login_api
from broker.web.apihandlers import desktops as desktops_api
from broker.web.apihandlers import health as health_api
from broker.web.apihandlers import hosts as hosts_api
from broker.web.apihandlers import images as images_api
from broker.web.apihandlers import openapi as openapi_api
from broker.web.apihandlers import reservations as reservations_api
from broker.web.apihandlers import sessions as sessions_api
from broker.web.apihandlers import transfers as transfers_api
from broker.web.apihandlers.base import APINotFoundHandler
from broker.web.base import PageNotFoundHandler, log_request
from broker.web.handlers import (
    admin,
    admin_centers,
    centers,
    cert_login,
    login,
    pages,
    recordings,
    static,
    transfers,
)
from broker.web.openapi import document

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
ROUTE_MODULES = (
    pages,
    recordings,
    admin,
    login,
    static,
    health_api,
    auth_api,
    desktops_api,
    sessions_api,
    admin_sessions_api,
    admin_desktops_api,
    admin_pools_api,
    admin_overview_api,
    admin_audit_api,
    hosts_api,
    images_api,
    openapi_api,
    centers_api,
    reservations_api,
    attendance_api,
    transfers_api,
    transfers,
    centers,
    admin_centers,
)
# The pages and API a login method brings beyond the shared ones (sign-in page, TOTP, logout), by its
# registered name (sso/methods.py); routed only while the method is enabled, so a disabled one answers 404.
LOGIN_METHOD_ROUTES: dict[str, tuple[ModuleType, ...]] = {
    "certificate": (cert_login, cert_login_api),
}


def routes(login_methods: Iterable[str] = ("password",)) -> list[tuple]:
    modules = [*ROUTE_MODULES, *(m for name in login_methods for m in LOGIN_METHOD_ROUTES.get(name, ()))]
    handlers = [route for module in modules for route in module.default_handlers]
    # Unknown /api/ paths answer in JSON; every other unknown path gets the HTML 404 page.
    handlers.append((r"/api/.*", APINotFoundHandler))
    return handlers


def content_security_policy(gateway_url: str) -> str:
    """Scripts and styles only from the broker; WebSockets only to the broker and the gateway."""
    gateway = urlsplit(gateway_url)
    return "; ".join(
        [
            "default-src 'self'",
            f"connect-src 'self' {gateway.scheme}://{gateway.netloc}",
            # noVNC draws the remote cursor as a data: URL image.
            "img-src 'self' data: blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def make_app(
    config: BrokerConfig, services: dict, login_methods: Iterable[str] = ("password",)
) -> tornado.web.Application:
    """The web application over already-built services (db, portal_auth, desktops, the managers, …)
    with the routes of the enabled `login_methods`."""
    login_methods = list(login_methods)
    handlers = routes(login_methods)
    settings = {
        "config": config,
        **services,
        "login_methods": login_methods,
        "cookie_secret": config.broker.cookie_secret.get_secret_value(),
        "xsrf_cookies": True,
        "xsrf_cookie_kwargs": {"samesite": "Lax"},
        "login_url": "/login",
        "template_path": str(TEMPLATES),
        "static_path": str(STATIC),
        "log_function": log_request,
        "default_handler_class": PageNotFoundHandler,
        "content_security_policy": content_security_policy(config.broker.gateway_url),
        # The description of exactly the API routes served, those of the enabled login methods included.
        "openapi": document(handlers),
    }
    return tornado.web.Application(handlers, **settings)
