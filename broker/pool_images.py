"""Which golden image version a pool's desktops start from, and pool settings checked against the world.

A pool names an image (`image`) and optionally a catalog version (`image_version`). The version new
desktops get is, in this order:

1. the version of the pool's image the newest *promoted* rollout moved the pool to (broker/rollout.py;
   the database is the truth of desired state, so it wins over the file);
2. `image_version` from the configuration;
3. for a built-in image (images/built_in.py, e.g. the demo image) without a version, its files as found;
4. otherwise the image's newest catalog version.

Checks that need the database rather than the file alone live here too: a pool naming a version the
catalog does not hold (refused when the broker starts), and a pool wanting more desktops than every
host matching its zone, site and labels could ever hold (the pool manager then refuses to fill it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker import errors
from broker.config import SESSION_KINDS, PoolSettings
from broker.db import Database
from broker.db.models import Host, ImageVersion, Rollout
from broker.image_catalog import Catalog, CatalogError
from hypervisor.base import BootImage
from images.built_in import BUILT_IN_IMAGES
from monitoring.metrics import POOL_CAPACITY_SHORTFALL

log = logging.getLogger(__name__)


def image_ref(name: str, version: str) -> str:
    """How desktops, placement and hosts name an image version: "name:version"."""
    return f"{name}:{version}"


# -- the version a pool is on ------------------------------------------------------------------------


def promoted_rollout(db: Session, pool: PoolSettings) -> Rollout | None:
    """The newest promoted rollout of the pool's current image, if any."""
    query = (
        select(Rollout)
        .where(
            Rollout.pool_name == pool.name,
            Rollout.image_name == pool.image,
            Rollout.state == "promoted",
        )
        .order_by(Rollout.finished_at.desc(), Rollout.id.desc())
    )
    return db.scalars(query).first()


def configured_version(db: Session, pool: PoolSettings) -> str | None:
    """The version from a promoted rollout or `image_version`; None: the built-in image or the newest."""
    promoted = promoted_rollout(db, pool)
    return promoted.version if promoted is not None else pool.image_version


def catalog_version(db: Session, pool: PoolSettings) -> ImageVersion | None:
    """The catalog row new desktops of the pool start from; None for a built-in image."""
    version = configured_version(db, pool)
    if version is None and pool.image in BUILT_IN_IMAGES:
        return None
    try:
        return Catalog.show(db, pool.image, version)
    except CatalogError as exc:
        detail = f"pool {pool.name}: {exc.message}"
        raise errors.ImageUnavailable(
            f"The desktop image is not available: {detail}.", detail=detail
        ) from None


def catalog_row(db: Session, pool: PoolSettings, name: str, version: str) -> ImageVersion:
    """A named catalog version for one of the pool's desktops; ImageUnavailable naming it if missing."""
    try:
        return Catalog.show(db, name, version)
    except CatalogError as exc:
        detail = f"pool {pool.name}: {exc.message}"
        raise errors.ImageUnavailable(
            f"The desktop image is not available: {detail}.", detail=detail
        ) from None


def version_boot_image(row: ImageVersion) -> BootImage:
    """The BootImage of a catalog row, its file re-hashed first (blocking: reads the whole file)."""
    from broker.image_distribution import boot_image

    try:
        return boot_image(row)
    except CatalogError as exc:
        detail = f"{row.image_name} {row.version}: {exc}"
        raise errors.ImageUnavailable(
            f"The desktop image is not available: {detail}.", detail=detail
        ) from None


class PoolImages:
    """The broker's default image resolver: pool → BootImage of the version it is on. Blocking."""

    def __init__(self, db: Database, built_in: Callable[[PoolSettings], BootImage]) -> None:
        self.db = db
        self.built_in = built_in

    def __call__(self, pool: PoolSettings) -> BootImage:
        with self.db.transaction() as session:
            row = catalog_version(session, pool)
        return self.built_in(pool) if row is None else version_boot_image(row)


# -- checks at start ---------------------------------------------------------------------------------


class PoolSettingsError(errors.InvalidField):
    """A pool's settings do not fit the catalog or the hosts; `field` is the key, e.g. pools[0].image."""

    reason = "invalid_pool"


def check_pool_image(db: Session, pool: PoolSettings, index: int) -> None:
    """PoolSettingsError naming `pools[N].image_version` (or `.image`) when the catalog lacks it."""
    prefix = f"pools[{index}]"
    if pool.kind in SESSION_KINDS:  # sessions on session hosts start from no image
        return
    if pool.image_version is None and pool.image in BUILT_IN_IMAGES:
        return
    try:
        Catalog.show(db, pool.image, pool.image_version)
    except CatalogError as exc:
        field = f"{prefix}.image_version" if exc.field == "version" else f"{prefix}.image"
        hint = "register it with `vdi image import` or `vdi image build` (see `vdi image list`)"
        raise PoolSettingsError(f"{field}: {exc.message} in the image catalog; {hint}", field=field) from None


def check_pool_images(db: Session, pools: list[PoolSettings]) -> None:
    for index, pool in enumerate(pools):
        check_pool_image(db, pool, index)


# -- can the hosts ever hold the pool? -------------------------------------------------------------------


@dataclass(frozen=True)
class PoolFit:
    wanted: int
    capacity: int
    hosts: dict[str, int]

    @property
    def shortfall(self) -> int:
        return max(self.wanted - self.capacity, 0)


def _matches(labels: dict, pool: PoolSettings) -> bool:
    # The same rule as placement's label filter (broker/placement/filters/labels.py).
    if pool.zone is not None and labels.get("zone") != pool.zone:
        return False
    if pool.site is not None and labels.get("site") != pool.site:
        return False
    return all(labels.get(key) == value for key, value in pool.required_labels.items())


def host_capacity(host: Host, pool: PoolSettings) -> int:
    """How many of the pool's desktops the host could hold if it held nothing else."""
    limits = [host.max_desktops]
    if pool.max_per_host is not None:
        limits.append(pool.max_per_host)
    if host.vcpus:
        limits.append(int(host.vcpus * host.cpu_ratio) // pool.vcpus)
    if host.memory_mib:
        limits.append(int(host.memory_mib * host.ram_ratio) // pool.memory_mib)
    return max(min(limits), 0)


def pool_fit(db: Session, pool: PoolSettings) -> PoolFit:
    """Every host in the inventory that matches the pool's zone, site and labels, whatever its state:
    a host that is down or drained today may come back, so only the labels decide "ever"."""
    hosts = {
        host.name: host_capacity(host, pool)
        for host in db.scalars(select(Host).order_by(Host.name))
        if _matches(host.labels or {}, pool)
    }
    return PoolFit(max(pool.min_size, pool.spares), sum(hosts.values()), hosts)


def oversize_error(pool: PoolSettings, index: int, fit: PoolFit) -> PoolSettingsError | None:
    if not fit.shortfall:
        return None
    field = f"pools[{index}].{'min_size' if pool.min_size >= pool.spares else 'spares'}"
    scope = ", ".join(f"{name} {count}" for name, count in fit.hosts.items()) or "no host matches"
    message = (
        f"{field}: pool {pool.name} wants {fit.wanted} desktops but the hosts matching its zone, site and "
        f"labels can hold at most {fit.capacity} ({scope})"
    )
    return PoolSettingsError(message, field=field)


class PoolSizeGuard:
    """Asked by the pool manager before each fill; logs an oversized pool once per change of figures."""

    def __init__(self, pools: list[PoolSettings]) -> None:
        self.index = {pool.name: index for index, pool in enumerate(pools)}
        self._reported: dict[str, str] = {}

    def check(self, db: Session, pool: PoolSettings) -> bool:
        fit = pool_fit(db, pool)
        POOL_CAPACITY_SHORTFALL.labels(pool=pool.name).set(fit.shortfall)
        error = oversize_error(pool, self.index.get(pool.name, 0), fit)
        if error is None:
            self._reported.pop(pool.name, None)
            return True
        if self._reported.get(pool.name) != error.message:
            log.error("pool %s not filled: %s", pool.name, error.message)
            self._reported[pool.name] = error.message
        return False
