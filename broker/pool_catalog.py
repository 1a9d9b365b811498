"""Pools that brokers share: their settings live in the database, and a configuration file only seeds it.

Every broker of a deployment reads its pools from the `pools` table (each row holds the whole of
`PoolSettings` as JSON, migration 0012), so two brokers started with different files do not fight over
them. The file's `[[pools]]` are written to the database when it has no pools yet (the first start, `make
demo`); after that the database wins, and a broker whose file says otherwise logs one warning naming
the keys that differ (`pools.<name>.<setting>`; a pool only one of them has is `pools.<name>`) and sets
`vdi_config_file_disagreements`. Administrators change pools with `vdi pool add|set|remove` or
/api/v1/admin/pools; every change is validated as the file would be, audited, and bumps the pool's
`revision`, which every broker's PoolCatalog notices within `REFRESH_INTERVAL_S` and takes on.

Hosts were already shared this way (broker/inventory.py: the file seeds hosts it names, once); a
disagreement there is warned about here too, with keys `hosts.<name>.<setting>`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from broker import errors
from broker.background import PeriodicTask
from broker.config import BrokerConfig, PoolSettings
from broker.db import Database, database_unavailable
from broker.db.models import AuditEvent, Desktop, Host, Pool
from broker.pool_images import check_pool_image
from hypervisor.config import HostSettings
from monitoring.metrics import CONFIG_FILE_DISAGREEMENTS

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 5.0
# What a host row holds of HostSettings, compared with the file at start.
HOST_KEYS = (
    "provider", "uri", "max_desktops", "labels", "vcpus", "memory_mib", "cpu_ratio", "ram_ratio",
    "console_access", "ssh_address", "vnc_listen",
)  # fmt: skip


class UnknownPoolName(errors.NotFound):
    reason = "unknown_pool"
    message = "There is no such pool."


class PoolExists(errors.Conflict):
    reason = "pool_exists"
    message = "A pool with this name already exists."


class PoolHasDesktops(errors.Conflict):
    reason = "pool_has_desktops"
    message = "The pool still has desktops; it can be removed once it has none."


# -- reading and writing rows ----------------------------------------------------------------------


def settings_of(row: Pool) -> PoolSettings:
    return PoolSettings.model_validate(row.settings)


def _record(row: Pool, pool: PoolSettings) -> None:
    """The row's columns other readers use (the gateway, placement) and the settings, one revision on."""
    row.display_name, row.image, row.groups = pool.display_name, pool.image, list(pool.groups)
    row.memory_mib, row.vcpus, row.kind = pool.memory_mib, pool.vcpus, pool.kind
    row.settings = pool.model_dump(mode="json")
    row.revision = (row.revision or 0) + 1


def _audit(db: Session, actor: str, action: str, pool: str, client_ip: str, **detail: Any) -> None:
    db.add(
        AuditEvent(
            actor=actor, action=action, result="success", target=pool, source_ip=client_ip, detail=detail
        )
    )


def load_pools(db: Session) -> tuple[list[PoolSettings], dict[str, int]]:
    """Every pool with settings, by name, and their revisions."""
    rows = db.scalars(select(Pool).where(Pool.settings.is_not(None)).order_by(Pool.name)).all()
    return [settings_of(row) for row in rows], {row.name: row.revision for row in rows}


def pool_revisions(db: Session) -> dict[str, int]:
    return dict(db.execute(select(Pool.name, Pool.revision).where(Pool.settings.is_not(None))).all())


# -- the configuration file: seed, or compare --------------------------------------------------------


def differing_keys(section: str, name: str, ours: dict, theirs: dict, keys) -> list[str]:
    return [f"{section}.{name}.{key}" for key in keys if ours.get(key) != theirs.get(key)]


def pool_disagreements(file_pools: list[PoolSettings], stored: list[PoolSettings]) -> list[str]:
    in_db = {pool.name: pool.model_dump(mode="json") for pool in stored}
    in_file = {pool.name: pool.model_dump(mode="json") for pool in file_pools}
    keys = []
    for name in sorted(in_file.keys() | in_db.keys()):
        if name not in in_file or name not in in_db:
            keys.append(f"pools.{name}")
            continue
        keys += differing_keys("pools", name, in_file[name], in_db[name], PoolSettings.model_fields)
    return keys


def host_disagreements(db: Session, hosts: list[HostSettings]) -> list[str]:
    keys = []
    for host in hosts:
        row = db.get(Host, host.name)
        if row is None:  # removed by an administrator after the file seeded it
            keys.append(f"hosts.{host.name}")
            continue
        stored = {key: getattr(row, key) for key in HOST_KEYS}
        keys += differing_keys("hosts", host.name, host.model_dump(mode="json"), stored, HOST_KEYS)
    return keys


def seed_pools(db: Session, file_pools: list[PoolSettings]) -> list[PoolSettings]:
    """Write the file's pools if the database has none with settings yet; the database's pools after that.

    A row from before migration 0012 (no settings) takes the file's settings for its name once.
    """
    stored, _ = load_pools(db)
    if stored:
        for pool in file_pools:
            row = db.get(Pool, pool.name)
            if row is not None and row.settings is None:
                _record(row, pool)
                log.info("pool %s: settings taken from the configuration file once", pool.name)
        return load_pools(db)[0]
    for pool in file_pools:
        row = db.get(Pool, pool.name) or Pool(name=pool.name)
        _record(row, pool)
        db.add(row)
    db.flush()
    if file_pools:
        log.info("pools: the database had none; seeded %d from the configuration file", len(file_pools))
    return load_pools(db)[0]


def take_pools_from_database(db: Session, config: BrokerConfig) -> list[str]:
    """Seed or load the pools, make them `config.pools` (the database wins) and return the file's
    disagreements with the database (pools and hosts), which are logged here."""
    file_pools = list(config.pools)
    stored = seed_pools(db, file_pools)
    keys = pool_disagreements(file_pools, stored) + host_disagreements(db, config.hosts)
    replace_pools(config, stored, order=[pool.name for pool in file_pools])
    CONFIG_FILE_DISAGREEMENTS.set(len(keys))
    if keys:
        log.warning(
            "the configuration file disagrees with the database on %s; the database wins (change pools with "
            "`vdi pool set` or /api/v1/admin/pools, hosts with `vdi host set` or /api/v1/hosts)",
            ", ".join(keys),
        )
    return keys


def replace_pools(config: BrokerConfig, pools: list[PoolSettings], order: list[str] | None = None) -> None:
    """Put `pools` in `config.pools` in place (every service holds that list): the file's order first."""
    rank = {name: index for index, name in enumerate(order or [pool.name for pool in config.pools])}
    ranked = sorted(pools, key=lambda pool: (rank.get(pool.name, len(rank)), pool.name))
    config.pools[:] = ranked


# -- administrators' changes -------------------------------------------------------------------------


def _validated(data: object, index: int, db: Session) -> PoolSettings:
    try:
        pool = PoolSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["loc"]:
            raise errors.invalid_field(exc) from None
        # A check across settings (PoolSettings' model validators) names its key at the start of its text.
        message = first["msg"].removeprefix("Value error, ")
        raise errors.InvalidField(message, field=message.split(":", 1)[0]) from None
    check_pool_image(db, pool, index)
    return pool


def add_pool(db: Session, data: object, actor: str, client_ip: str) -> PoolSettings:
    pool = _validated(data, 0, db)
    row = db.get(Pool, pool.name)
    if row is not None and row.settings is not None:
        raise PoolExists(f"A pool named {pool.name} already exists.", pool=pool.name)
    row = row or Pool(name=pool.name)
    _record(row, pool)
    db.add(row)
    _audit(db, actor, "pool.add", pool.name, client_ip, settings=row.settings)
    log.info("pool %s added by %s", pool.name, actor)
    return pool


def change_pool(db: Session, name: str, changes: object, actor: str, client_ip: str) -> PoolSettings:
    """Apply `changes` (settings to set) to the pool; a 400 naming the field if the result is invalid."""
    row = db.get(Pool, name)
    if row is None or row.settings is None:
        raise UnknownPoolName(f"There is no pool named {name}.", pool=name)
    if not isinstance(changes, dict):
        raise errors.InvalidJson("The request body must be a JSON object of pool settings.")
    if changes.get("name", name) != name:
        raise errors.InvalidField("name: a pool cannot be renamed", field="name")
    before = dict(row.settings)
    pool = _validated({**before, **changes}, 0, db)
    _record(row, pool)
    changed = {key: row.settings[key] for key in row.settings if before.get(key) != row.settings[key]}
    _audit(db, actor, "pool.change", name, client_ip, changed=changed)
    log.info("pool %s changed by %s: %s", name, actor, ", ".join(sorted(changed)) or "nothing")
    return pool


def remove_pool(db: Session, name: str, actor: str, client_ip: str) -> None:
    row = db.get(Pool, name)
    if row is None or row.settings is None:
        raise UnknownPoolName(f"There is no pool named {name}.", pool=name)
    count = db.scalar(select(func.count()).select_from(Desktop).where(Desktop.pool_name == name))
    if count:
        raise PoolHasDesktops(
            f"Pool {name} still has {count} desktop record(s); it can be removed once it has none.", pool=name
        )
    db.delete(row)
    _audit(db, actor, "pool.remove", name, client_ip)
    log.info("pool %s removed by %s", name, actor)


def show_pool(db: Session, name: str) -> dict:
    row = db.get(Pool, name)
    if row is None or row.settings is None:
        raise UnknownPoolName(f"There is no pool named {name}.", pool=name)
    return {**row.settings, "revision": row.revision}


def list_pools(db: Session) -> list[dict]:
    rows = db.scalars(select(Pool).where(Pool.settings.is_not(None)).order_by(Pool.name)).all()
    return [{**row.settings, "revision": row.revision} for row in rows]


# -- every broker takes on changes ------------------------------------------------------------------


class PoolCatalog(PeriodicTask):
    """Keeps `config.pools` as the database has them; runs on every broker (no lease: each reads only)."""

    name = "pool-catalog"

    def __init__(self, config: BrokerConfig, db: Database, interval_s: float = REFRESH_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.config = config
        self.db = db
        self.revisions: dict[str, int] | None = None  # None: not read yet
        self.on_change: list[Callable[[], None]] = []

    async def run_once(self) -> None:
        try:
            revisions = await self.db.run(pool_revisions)
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            log.warning("pools: cannot read them (database unavailable); keeping the ones known")
            return
        if revisions != self.revisions:
            await self.reload()

    async def reload(self) -> None:
        pools, revisions = await self.db.run(load_pools)
        if revisions == self.revisions:
            return
        first = self.revisions is None
        replace_pools(self.config, pools)
        self.revisions = revisions
        if first:
            return  # what the broker started with (prepare_database): nothing changed
        log.info("pools: took on changes from the database (now: %s)", ", ".join(sorted(revisions)) or "none")
        for changed in self.on_change:
            changed()

    async def change(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Run an administrator's change (add_pool, change_pool, remove_pool) and take it on at once."""
        result = await self.db.run(partial(fn, **kwargs))
        await self.reload()
        return result
