"""The broker process: the Tornado application, its routes, and a clean start and stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import tornado.web
from sqlalchemy.orm import Session

from broker.apihandlers import admin_desktops as admin_desktops_api
from broker.apihandlers import admin_pools as admin_pools_api
from broker.apihandlers import admin_sessions as admin_sessions_api
from broker.apihandlers import auth as auth_api
from broker.apihandlers import cert_login as cert_login_api
from broker.apihandlers import desktops as desktops_api
from broker.apihandlers import health as health_api
from broker.apihandlers import hosts as hosts_api
from broker.apihandlers import images as images_api
from broker.apihandlers import sessions as sessions_api
from broker.apihandlers.base import APINotFoundHandler
from broker.auth import PortalAuth
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Pool
from broker.desktops import DesktopService, ImageResolver, count_active_sessions
from broker.handlers import cert_login, login, pages, static
from broker.inventory import host_settings, seed_from_config, update_host_gauges
from broker.lifecycle import SessionLifecycle
from broker.monitor import HostMonitor
from broker.placement import PlacementEngine
from broker.pool_images import PoolSettingsError, check_pool_images
from broker.pools import PoolManager
from broker.power import PowerManager
from broker.rollout import RolloutManager
from broker.tls import BrokerHTTPServer, tls_context
from broker.web import PageNotFoundHandler, log_request
from hypervisor.base import Driver
from hypervisor.config import HostSettings
from monitoring.metrics import SESSIONS_ACTIVE
from sso.base import Authenticator
from sso.cert_auth import CertificateAuthenticator
from vdi.config import Config, ConfigError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SHUTDOWN_GRACE_S = 10.0
ROUTE_MODULES = (
    pages,
    login,
    static,
    health_api,
    auth_api,
    desktops_api,
    sessions_api,
    admin_sessions_api,
    admin_desktops_api,
    admin_pools_api,
    hosts_api,
    images_api,
    cert_login,
    cert_login_api,
)


def routes() -> list[tuple]:
    handlers = [route for module in ROUTE_MODULES for route in module.default_handlers]
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


def drivers_for(hosts: list[HostSettings]) -> dict[str, Driver]:
    # Imported here: libvirt-python is needed only when real hosts are driven.
    from hypervisor import driver_for

    return {host.name: driver_for(host) for host in hosts}


def make_app(
    config: Config,
    db: Database,
    authenticator: Authenticator,
    drivers: dict[str, Driver] | None = None,
    *,
    image_resolver: ImageResolver | None = None,
    placement: PlacementEngine | None = None,
    certificate_auth: CertificateAuthenticator | None = None,
) -> tornado.web.Application:
    """The broker application; `drivers` defaults to one per configured host."""
    if drivers is None:
        drivers = drivers_for(config.hosts)
    desktops = DesktopService(
        config, db, drivers, placement or PlacementEngine.from_settings(config.placement), image_resolver
    )
    pool_manager = PoolManager(config, db, desktops)
    if any(pool.spares or pool.min_size for pool in config.pools):
        pool_manager.start()  # on the caller's running loop; docs/pools.md
    lifecycle = SessionLifecycle(config, db, desktops)
    if lifecycle.wanted:
        lifecycle.start()
    power_manager = PowerManager(config, db, desktops)
    if power_manager.wanted:
        power_manager.start()  # docs/pools.md, "Power policy"
    rollout_manager = RolloutManager(config, db, desktops)
    rollout_manager.start()  # picks up rollouts left unfinished by a restart (docs/pools.md, "Rollout")
    settings = {
        "config": config,
        "db": db,
        "portal_auth": PortalAuth(
            db,
            authenticator,
            config.broker.session_lifetime_s,
            lockout=config.lockout,
            totp=config.totp,
            totp_key=(config.totp.secret_key or config.broker.cookie_secret).get_secret_value(),
        ),
        "desktops": desktops,
        "pool_manager": pool_manager,
        "session_lifecycle": lifecycle,
        "power_manager": power_manager,
        "rollout_manager": rollout_manager,
        # None unless [certificate] is enabled; the certificate login routes then answer 404.
        "certificate_auth": certificate_auth,
        "cookie_secret": config.broker.cookie_secret.get_secret_value(),
        "xsrf_cookies": True,
        "xsrf_cookie_kwargs": {"samesite": "Lax"},
        "login_url": "/login",
        "template_path": str(TEMPLATES),
        "static_path": str(STATIC),
        "log_function": log_request,
        "default_handler_class": PageNotFoundHandler,
        "content_security_policy": content_security_policy(config.broker.gateway_url),
    }
    return tornado.web.Application(routes(), **settings)


def sync_inventory(db: Session, config: Config) -> None:
    """Upsert the configured pools and hosts; hosts keep their state and claim generation."""
    for pool in config.pools:
        row = db.get(Pool, pool.name) or Pool(name=pool.name)
        row.display_name, row.image, row.groups = pool.display_name, pool.image, list(pool.groups)
        row.memory_mib, row.vcpus, row.kind = pool.memory_mib, pool.vcpus, pool.kind
        db.add(row)
    # Configured hosts only seed the inventory; after that the database is the truth (broker.inventory).
    seed_from_config(db, config.hosts)


async def prepare_database(db: Database, config: Config) -> None:
    await db.run(partial(sync_inventory, config=config))
    await db.run(update_host_gauges)
    # The gauge restarts at zero with the process; the database knows the real number.
    SESSIONS_ACTIVE.set(await db.run(count_active_sessions))


async def wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def certificate_authenticator(config: Config, directory) -> CertificateAuthenticator | None:
    if not config.certificate.enabled:
        return None
    return CertificateAuthenticator.from_settings(config.certificate, directory)


async def serve(config: Config) -> None:
    from sso.ldap import LdapAuthenticator

    db = Database(config.database)
    try:
        # Before anything is recorded: a pool naming a version the catalog lacks stops the start.
        await db.run(partial(check_pool_images, pools=config.pools))
    except PoolSettingsError as exc:
        db.close()
        raise ConfigError(exc.message) from None
    await prepare_database(db, config)
    drivers = drivers_for(await db.run(partial(host_settings, configured=config.hosts)))
    authenticator = LdapAuthenticator(config.ldap)
    certificate_auth = certificate_authenticator(config, authenticator)
    app = make_app(config, db, authenticator, drivers, certificate_auth=certificate_auth)
    tls = tls_context(config.broker)
    # No xheaders=True: Tornado would then believe X-Forwarded-For from any client. The broker reads it
    # only from broker.trusted_proxies (broker/client_address.py).
    server = BrokerHTTPServer(app, ssl_options=tls, portal_auth=app.settings["portal_auth"])
    server.listen(config.broker.port, config.broker.listen_address)
    scheme = "https" if tls else "http"
    log.info("broker listening on %s://%s:%d", scheme, config.broker.listen_address, config.broker.port)
    monitor = HostMonitor(config.monitor, db, drivers)
    monitor.start()  # its first pass reconciles every host that answers (docs/monitoring.md)
    try:
        await wait_for_stop_signal()
        log.info("stopping: no new connections, closing open ones")
        server.stop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.close_all_connections(), SHUTDOWN_GRACE_S)
        await server.drain_audits()
    finally:
        await monitor.stop()
        await app.settings["pool_manager"].stop()
        await app.settings["session_lifecycle"].stop()
        await app.settings["power_manager"].stop()
        await app.settings["rollout_manager"].stop()
        app.settings["desktops"].close()
        authenticator.close()
        if certificate_auth is not None:
            certificate_auth.close()
        for driver in drivers.values():
            driver.close()
        db.close()
    log.info("broker stopped")


def run(config: Config) -> None:
    """`vdi broker`: migrate the schema, then serve until SIGTERM or SIGINT."""
    upgrade(config.database.url)
    asyncio.run(serve(config))
