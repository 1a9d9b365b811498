"""The broker process as one object: build its parts, start them, stop them (JupyterHub's app shape).

`BrokerApp(...)` only builds: services, background tasks and the web application, no task running and
no socket open. `start()` starts the background tasks the configuration gives work to and the host
monitor; `listen()` opens the portal's port; `stop()` undoes both in order and closes what the app made.
`serve()` is `vdi broker`: build, listen, start, wait for SIGTERM or SIGINT, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from functools import partial

from sqlalchemy.orm import Session
from tornado.netutil import bind_sockets

from broker.auth import PortalAuth
from broker.background import PeriodicTask
from broker.config import BrokerConfig
from broker.db import Database
from broker.db.migrate import upgrade
from broker.desktops import DesktopService, ImageResolver, count_active_sessions
from broker.housekeeping import TokenPurge
from broker.inventory import host_settings, providers_for, seed_from_config, update_host_gauges
from broker.leases import LeaseKeeper, Leases
from broker.lifecycle import SessionLifecycle
from broker.monitor import HostMonitor
from broker.placement import PlacementEngine
from broker.pool_catalog import PoolCatalog, take_pools_from_database
from broker.pool_images import PoolSettingsError, check_pool_images
from broker.pools import PoolManager
from broker.power_manager import PowerManager
from broker.reservations import Reservations, at_center
from broker.rollout import RolloutManager
from broker.seat_ends import SeatEnds
from broker.settings_file import ConfigError
from broker.terminals import DeviceCertificates
from broker.transfers import Transfers
from broker.web.app import make_app
from broker.web.tls import BrokerHTTPServer, tls_context
from hypervisor.provider import DesktopProvider
from monitoring.metrics import SESSIONS_ACTIVE
from sso import methods
from sso.base import Authenticator
from sso.cert_auth import CertificateAuthenticator, CertificateLogin
from sso.login import LoginMethod
from sso.password import PasswordLogin

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 10.0


class BrokerApp:
    """The services, background tasks and web application of one broker process.

    Login methods: those `[broker] login_methods` enables (BrokerConfig.enabled_login_methods), taken
    from `login_methods` when given, password over `authenticator` (the directory), certificate over
    `certificate_auth` when given, and any other made from the registry (sso/methods.py) and closed at stop.
    """

    def __init__(
        self,
        config: BrokerConfig,
        db: Database,
        authenticator: Authenticator,
        providers: dict[str, DesktopProvider],
        *,
        image_resolver: ImageResolver | None = None,
        placement: PlacementEngine | None = None,
        certificate_auth: CertificateAuthenticator | None = None,
        login_methods: Mapping[str, LoginMethod] | None = None,
        monitor: bool = True,
        leases: bool = True,
    ) -> None:
        self.config = config
        self.db = db
        self.providers = providers
        # What `stop` closes, last made first: here the login methods this app made itself.
        self._closers: list[Callable[[], None]] = []
        self.login_methods = self._enabled_login_methods(authenticator, certificate_auth, login_methods)
        self.desktops = DesktopService(
            config,
            db,
            providers,
            placement or PlacementEngine.from_settings(config.placement),
            image_resolver,
        )
        # Smart work centers: seats booked ahead, or given at a login at a center terminal (docs/centers.md).
        # Terminals' device certificates are checked for revocation whatever the login method.
        devices = DeviceCertificates.from_settings(config.broker, config.terminals)
        if devices is not None:
            self._closers.append(devices.close)
        self.reservations = Reservations(db, devices)
        self.transfers = Transfers(db, config.transfers)  # between network zones (망연계)
        self.portal_auth = PortalAuth(
            db,
            self.login_methods,
            config.broker.session_lifetime_s,
            lockout=config.lockout,
            totp=config.totp,
            totp_key=(config.totp.secret_key or config.broker.cookie_secret).get_secret_value(),
            seat_gate=self.reservations.gate,
            at_center=at_center,
        )
        self.pool_manager = PoolManager(config, db, self.desktops)  # docs/pools.md
        self.session_lifecycle = SessionLifecycle(config, db, self.desktops)
        self.power_manager = PowerManager(config, db, self.desktops)  # docs/pools.md, "Power policy"
        # Always wanted: it picks up rollouts left unfinished by a restart (docs/pools.md, "Rollout").
        self.rollout_manager = RolloutManager(config, db, self.desktops)
        self.token_purge = TokenPurge(db)
        # A seat's booking ends: its user is signed out and their consoles cut (docs/centers.md, kiosk).
        self.seat_ends = SeatEnds(db, self.portal_auth)
        # Pools live in the database (broker/pool_catalog.py); every broker takes on changes by itself.
        self.pool_catalog = PoolCatalog(config, db)
        self.pool_catalog.on_change.append(self._pools_changed)
        # Of several brokers on one database, one runs each background job (broker/leases.py).
        self.leases = Leases(db, config.broker.lease_ttl_s)
        self._use_leases = leases
        # Its first pass reconciles every host that answers (docs/monitoring.md).
        self.monitor = HostMonitor(config.monitor, db, providers) if monitor else None
        self.web = make_app(
            config,
            {
                "db": db,
                "leases": self.leases,
                "portal_auth": self.portal_auth,
                "desktops": self.desktops,
                "reservations": self.reservations,
                "transfers": self.transfers,
                "pool_manager": self.pool_manager,
                "session_lifecycle": self.session_lifecycle,
                "power_manager": self.power_manager,
                "rollout_manager": self.rollout_manager,
                "pool_catalog": self.pool_catalog,
            },
            login_methods=list(self.login_methods),
        )
        self.server: BrokerHTTPServer | None = None
        self._running: list[PeriodicTask] = []
        self._keeper: LeaseKeeper | None = None

    def _enabled_login_methods(
        self,
        directory: Authenticator,
        certificate_auth: CertificateAuthenticator | None,
        given: Mapping[str, LoginMethod] | None,
    ) -> dict[str, LoginMethod]:
        """The methods `[broker] login_methods` enables: those given, else made from the registry."""
        ready: dict[str, LoginMethod] = {PasswordLogin.name: PasswordLogin(directory)}
        if certificate_auth is not None:
            ready[CertificateLogin.name] = CertificateLogin(certificate_auth)
        ready.update(given or {})
        enabled = {}
        for name in self.config.enabled_login_methods():
            if name not in ready:
                ready[name] = methods.create(name, self.config, directory)
                self._closers.append(ready[name].close)
            enabled[name] = ready[name]
        return enabled

    @classmethod
    async def build(cls, config: BrokerConfig) -> BrokerApp:
        """Everything `vdi broker` needs from the configuration: database, providers, login methods."""
        from sso.ldap import LdapAuthenticator

        db = Database(config.database)
        try:
            # Before anything is recorded: a pool naming a version the catalog lacks stops the start.
            await db.run(partial(check_pool_images, pools=config.pools))
        except PoolSettingsError as exc:
            db.close()
            raise ConfigError(exc.message) from None
        await prepare_database(db, config)
        if config.broker.vnc_password_key is None:
            log.warning(
                "broker.vnc_password_key is not set: new desktops get no VNC password, so anyone on a "
                "host's loopback can reach their displays (see docs/gateway.md)"
            )
        # Each host row names its provider (hypervisor/registry.py).
        providers = providers_for(await db.run(partial(host_settings, configured=config.hosts)))
        directory = LdapAuthenticator(config.ldap)
        # The enabled login methods other than password are made from the registry (sso/methods.py).
        app = cls(config, db, directory, providers)
        made = [db.close, *(provider.close for provider in providers.values()), directory.close]
        app._closers = made + app._closers
        return app

    def listen(self, port: int, address: str) -> int:
        """Serve the portal (HTTPS when the config names a certificate); returns the bound port."""
        # No xheaders=True: Tornado would then believe X-Forwarded-For from any client. The broker reads
        # it only from broker.trusted_proxies (broker/web/client_address.py).
        settings = self.config.broker
        self.server = BrokerHTTPServer(
            self.web,
            ssl_options=tls_context(settings),
            portal_auth=self.portal_auth,
            # Tornado waits an hour for headers and takes 100 MB bodies by default: far more than a
            # portal needs, and free resources for anyone who opens connections and sends nothing.
            idle_connection_timeout=settings.header_timeout_s,
            body_timeout=settings.body_timeout_s,
            max_body_size=settings.max_body_bytes,
        )
        sockets = bind_sockets(port, address)
        self.server.add_sockets(sockets)
        return sockets[0].getsockname()[1]

    @property
    def scheme(self) -> str:
        return "https" if self.config.broker.tls_cert else "http"

    @property
    def _jobs(self) -> list[PeriodicTask]:
        """The background jobs that may run under a lease, in start order."""
        return [
            self.pool_manager,
            self.session_lifecycle,
            self.power_manager,
            self.rollout_manager,
            self.token_purge,
            self.seat_ends,
        ]

    async def start(self) -> None:
        """Start the pool catalog, the background tasks that have work in this configuration, then the
        host monitor."""
        jobs = [task for task in self._jobs if task.wanted]
        if self.monitor is not None:
            jobs.append(self.monitor)
        self._running = [self.pool_catalog]
        if self._use_leases:
            # The keeper first: its first renewal takes the free leases and kicks their jobs.
            self._keeper = LeaseKeeper(self.leases, [])
            self._running.append(self._keeper)
        self.pool_catalog.start()
        if self._keeper is not None:
            self._keeper.start()
        for job in jobs:
            self._start_job(job)

    def _start_job(self, job: PeriodicTask) -> None:
        if self._keeper is not None:  # else a test's lone broker: its jobs run ungated
            job.gate = self.leases
            self.leases.on_acquire[job.name] = job.kick
            self._keeper.jobs.append(job.name)
            self._keeper.kick()
        self._running.append(job)
        job.start()

    def _pools_changed(self) -> None:
        """Another broker or an administrator changed the pools: jobs they now give work to start, and the
        running ones look again at once."""
        self.pool_manager.pools_changed()
        for job in self._jobs:
            if job in self._running:
                job.kick()
            elif job.wanted:
                self._start_job(job)

    async def stop(self) -> None:
        """No new connections, open ones closed (or cut after a grace), tasks stopped, resources closed."""
        if self.server is not None:
            self.server.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.close_all_connections(), SHUTDOWN_GRACE_S)
            await self.server.drain_audits()
        for task in reversed(self._running):
            await task.stop()
        self._running = []
        self.desktops.close()
        for close in reversed(self._closers):
            close()
        self._closers = []


def sync_inventory(db: Session, config: BrokerConfig) -> list[str]:
    """Seed an empty database with the file's pools and hosts, else take the database's pools into
    `config.pools`; the keys where the file disagrees with the database (logged, broker/pool_catalog.py)."""
    # Configured hosts only seed the inventory; after that the database is the truth (broker.inventory).
    seed_from_config(db, config.hosts)
    return take_pools_from_database(db, config)


async def prepare_database(db: Database, config: BrokerConfig) -> None:
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


async def serve(config: BrokerConfig) -> None:
    app = await BrokerApp.build(config)
    try:
        app.listen(config.broker.port, config.broker.listen_address)
        log.info(
            "broker listening on %s://%s:%d", app.scheme, config.broker.listen_address, config.broker.port
        )
        await app.start()
        await wait_for_stop_signal()
        log.info("stopping: no new connections, closing open ones")
    finally:
        await app.stop()
    log.info("broker stopped")


def run(config: BrokerConfig) -> None:
    """`vdi broker`: migrate the schema, then serve until SIGTERM or SIGINT."""
    upgrade(config.database.url, verbose=True)
    asyncio.run(serve(config))
