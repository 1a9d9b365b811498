"""Host inventory: add, change, drain and remove hosts. The database is the truth.

Hosts in the configuration file (`[[hosts]]`) seed the inventory when the broker starts (inserted
once, never overwritten); after that, `vdi host ...` and /api/v1/hosts change it. Each host names
its desktop provider (`provider`, hypervisor/registry.py), which decides what its URI looks like.
Adding a host first connects to it through its provider, so a typo in the URI is a 400 on `uri` (an
unknown provider one on `provider`) and nothing is stored. Every change bumps the host's generation,
so a claim decided on the old figures loses and is placed again, and every change is audited.

Label rule: keys are lower-case words, ^[a-z][a-z0-9_-]{0,31}$; a key must be one of
`[placement] label_keys` (default site, zone, gpu) unless `free_form_labels` is on (the
default), in which case any key of that form is allowed. Values are short plain words,
^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ (e.g. gpu=true); `zone` is a network zone, business or internet.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker import errors
from broker.db.models import AuditEvent, Desktop, DesktopSession, Host
from broker.placement.candidates import HostCandidate
from broker.placement.claim import HOLDING_STATES, host_usage, load_host_candidates
from broker.placement.config import PlacementSettings
from hypervisor.base import HypervisorError
from hypervisor.config import HostSettings, SshAddress, check_direct_display, resolve_console_route
from hypervisor.provider import DesktopProvider, provider_for
from hypervisor.registry import DEFAULT_PROVIDER, check_provider_name, provider_class
from monitoring.metrics import HOSTS, HostAdminState, HostHealth

log = logging.getLogger(__name__)

HOST_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
NETWORK_ZONES = ("business", "internet")


# -- errors --------------------------------------------------------------------------------------


class UnknownHost(errors.NotFound):
    reason = "unknown_host"
    message = "There is no such host."


class HostExists(errors.Conflict):
    reason = "host_exists"
    message = "A host with this name already exists."


class HostHasDesktops(errors.Conflict):
    reason = "host_has_desktops"
    message = "The host still has desktops; drain it first or remove it with force."


DEFAULT_VNC_LISTEN = "127.0.0.1"
ROUTE_FIELDS = ("console_access", "ssh_address", "vnc_listen")


# -- request bodies ------------------------------------------------------------------------------


class HostChange(BaseModel):
    """Fields an administrator may change; unset fields stay as they are. Only the figures that may be
    unknown (vcpus, memory_mib: read from the host again) and ssh_address (from the URI) take null."""

    model_config = ConfigDict(extra="forbid")

    # Default None means "not given"; an explicit null is refused (400 naming the field), as the
    # columns cannot hold it.
    admin_state: str = Field(None, pattern=r"^(enabled|disabled|draining)$")
    # The label rule (validate_labels, which names the offending label) as JSON Schema, for API clients.
    labels: dict[str, str] = Field(
        None,
        json_schema_extra={
            "propertyNames": {"pattern": LABEL_KEY.pattern},
            "additionalProperties": {"type": "string", "pattern": LABEL_VALUE.pattern},
        },
    )
    vcpus: int | None = Field(None, ge=1, le=1_000_000)
    memory_mib: int | None = Field(None, ge=1, le=1 << 30)  # the column is 32-bit: up to 1 PiB
    cpu_ratio: float = Field(None, gt=0, le=64)
    ram_ratio: float = Field(None, gt=0, le=64)
    max_desktops: int = Field(None, ge=0, le=100_000)
    # How the gateway reaches the host's displays; see hypervisor.config.resolve_console_route.
    console_access: str = Field(None, pattern=r"^(direct|ssh)$")
    ssh_address: str | None = Field(None, max_length=255)
    # Where the host's desktops' VNC servers listen; a direct route needs one the gateway can reach.
    vnc_listen: str = Field(None, min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\[\]-]+$")

    @field_validator("ssh_address")
    @classmethod
    def _normal_ssh_address(cls, value: str | None) -> str | None:
        return None if value is None else str(SshAddress.parse(value))


class NewHost(HostChange):
    name: str = Field(pattern=HOST_NAME)
    provider: str = DEFAULT_PROVIDER
    uri: str = Field(max_length=512)

    @field_validator("provider")
    @classmethod
    def _registered_provider(cls, value: str) -> str:
        return check_provider_name(value)

    @field_validator("uri")
    @classmethod
    def _provider_uri(cls, value: str, info: ValidationInfo) -> str:
        # The provider decides what its hosts' URIs look like; an unknown provider is reported on its own.
        if "provider" in info.data:
            provider_class(info.data["provider"]).check_added_uri(value)
        return value

    def console_route(self) -> tuple[str, str | None]:
        """(console_access, ssh_address) with the URI's defaults; a 400 naming the field when the gateway
        could not reach the displays that way."""
        return console_route(
            self.uri, self.console_access, self.ssh_address, self.vnc_listen or DEFAULT_VNC_LISTEN
        )

    def settings(self) -> HostSettings:
        access, address = self.console_route()
        return HostSettings(
            name=self.name,
            provider=self.provider,
            uri=self.uri,
            console_access=access,
            ssh_address=address,
            vnc_listen=self.vnc_listen or DEFAULT_VNC_LISTEN,
        )


def console_route(
    uri: str, access: str | None, address: str | None, vnc_listen: str
) -> tuple[str, str | None]:
    try:
        route = resolve_console_route(uri, access, address)
        check_direct_display(uri, route[0], vnc_listen)
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]
        raise errors.InvalidField(str(exc), field=field if field in ROUTE_FIELDS else "ssh_address") from None
    return route


def validate_labels(labels: dict[str, str], settings: PlacementSettings) -> None:
    """Apply the label rule (module docstring); a 400 names the offending label."""
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise errors.InvalidField(
                f"labels.{key}: label keys are lower-case words (^[a-z][a-z0-9_-]{{0,31}}$)",
                field=f"labels.{key}",
            )
        if key not in settings.label_keys and not settings.free_form_labels:
            allowed = ", ".join(settings.label_keys)
            raise errors.InvalidField(
                f"labels.{key}: unknown label key (allowed: {allowed})", field=f"labels.{key}"
            )
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            raise errors.InvalidField(
                f"labels.{key}: label values are short words (^[A-Za-z0-9][A-Za-z0-9._-]{{0,62}}$)",
                field=f"labels.{key}",
            )
        if key == "zone" and value not in NETWORK_ZONES:
            # Placement keeps pools to hosts of their network zone (broker/placement/filters/network_zone.py).
            raise errors.InvalidField(
                f"labels.zone: a network zone, {' or '.join(NETWORK_ZONES)}", field="labels.zone"
            )


def display_uri(uri: str) -> str:
    """The URI without a password or query values (keyfile paths, …), for logs, audit and the API."""
    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = "&".join(f"{pair.split('=', 1)[0]}=***" for pair in parts.query.split("&") if pair)
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


# -- views ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostView:
    host: HostCandidate
    uri: str
    provider: str = DEFAULT_PROVIDER
    console_access: str = "direct"
    ssh_address: str | None = None

    def as_json(self) -> dict:
        h = self.host
        return {
            "name": h.name,
            "provider": self.provider,
            "uri": display_uri(self.uri),
            "health": h.state,
            "admin_state": h.admin_state,
            "labels": h.labels,
            "capacity": {
                "vcpus": h.vcpus,
                "memory_mib": h.memory_mib,
                "cpu_ratio": h.cpu_ratio,
                "ram_ratio": h.ram_ratio,
                "max_desktops": h.max_desktops,
            },
            "usage": {"desktops": h.desktops, "vcpus": h.vcpus_used, "memory_mib": h.memory_used_mib},
            "cpu_load": h.cpu_load,
            "images": sorted(h.images),
            "generation": h.generation,
            "console_access": self.console_access,
            "ssh_address": self.ssh_address,
        }


def _views(db: Session, names: list[str] | None = None) -> list[HostView]:
    columns = (Host.name, Host.uri, Host.provider, Host.console_access, Host.ssh_address)
    rows = {row.name: row for row in db.execute(select(*columns))}
    return [_view(candidate, rows[candidate.name]) for candidate in load_host_candidates(db, names)]


def _view(candidate: HostCandidate, row) -> HostView:
    return HostView(candidate, row.uri, row.provider, row.console_access or "direct", row.ssh_address)


def list_hosts(db: Session) -> list[HostView]:
    return _views(db)


def show_host(db: Session, name: str) -> HostView:
    views = _views(db, [name])
    if not views:
        raise UnknownHost(f"There is no host named {name}.", host=name)
    return views[0]


# -- changes (run inside one transaction) --------------------------------------------------------


def _audit(db: Session, actor: str, action: str, target: str, client_ip: str, **detail: Any) -> None:
    db.add(
        AuditEvent(
            actor=actor, action=action, result="success", target=target, source_ip=client_ip, detail=detail
        )
    )


def _apply(row: Host, change: HostChange) -> dict:
    changed = change.model_dump(exclude_unset=True, exclude={"name", "uri", "provider"})
    for key, value in changed.items():
        setattr(row, key, dict(value) if key == "labels" else value)
    # Any change invalidates decisions taken on the old figures (optimistic concurrency).
    row.generation = (row.generation or 0) + 1
    return changed


def insert_host(db: Session, new: NewHost, actor: str, client_ip: str) -> HostView:
    if db.get(Host, new.name) is not None:
        raise HostExists(f"A host named {new.name} already exists.", field="name", host=new.name)
    access, address = new.console_route()
    row = Host(
        name=new.name,
        uri=new.uri,
        provider=new.provider,
        state="up",
        admin_state="enabled",
        labels={},
        images=[],
    )
    row.max_desktops, row.cpu_ratio, row.ram_ratio = 20, 4.0, 1.0
    _apply(row, new)
    row.console_access, row.ssh_address = access, address
    row.generation = 0
    db.add(row)
    db.flush()
    _audit(
        db,
        actor,
        "host.add",
        new.name,
        client_ip,
        provider=new.provider,
        uri=display_uri(new.uri),
        labels=row.labels,
        console_access=access,
        ssh_address=address,
    )
    log.info("host %s added by %s (%s)", new.name, actor, display_uri(new.uri))
    return show_host(db, new.name)


def change_host(db: Session, name: str, change: HostChange, actor: str, client_ip: str) -> HostView:
    row = db.get(Host, name)
    if row is None:
        raise UnknownHost(f"There is no host named {name}.", host=name)
    route = _changed_console_route(row, change)
    changed = _apply(row, change)
    if route is not None:
        row.console_access, row.ssh_address = route
    _audit(db, actor, "host.change", name, client_ip, **changed)
    log.info("host %s changed by %s: %s", name, actor, changed)
    db.flush()
    return show_host(db, name)


def _changed_console_route(row: Host, change: HostChange) -> tuple[str, str | None] | None:
    """The host's console route after the change, checked before anything is written; None if untouched."""
    fields = change.model_fields_set
    if not fields & set(ROUTE_FIELDS):
        return None
    access = change.console_access if "console_access" in fields else row.console_access
    address = change.ssh_address if "ssh_address" in fields else row.ssh_address
    listen = change.vnc_listen if "vnc_listen" in fields else row.vnc_listen
    return console_route(row.uri, access, address, listen or DEFAULT_VNC_LISTEN)


def delete_host(db: Session, name: str, force: bool, actor: str, client_ip: str) -> int:
    """Remove the host; with `force`, desktops still on it are marked failed. Returns how many."""
    if db.get(Host, name) is None:
        raise UnknownHost(f"There is no host named {name}.", host=name)
    holding = host_usage(db, [name]).get(name)
    count = holding.desktops if holding else 0
    if count and not force:
        raise HostHasDesktops(
            f"Host {name} still has {count} desktop(s); drain it first or remove it with force.",
            host=name,
        )
    _detach_desktops(db, name)
    db.execute(Host.__table__.delete().where(Host.name == name))
    _audit(db, actor, "host.remove", name, client_ip, forced=force, desktops=count)
    log.info("host %s removed by %s (forced=%s, desktops=%d)", name, actor, force, count)
    return count


def _detach_desktops(db: Session, name: str) -> None:
    # Desktops keep their history (audit names the host); live ones can no longer be reached.
    live = select(Desktop.id).where(Desktop.host_name == name, Desktop.state.in_(HOLDING_STATES))
    db.execute(
        update(DesktopSession)
        .where(DesktopSession.desktop_id.in_(live), DesktopSession.state == "active")
        .values(state="ended")
    )
    db.execute(
        update(Desktop)
        .where(Desktop.host_name == name, Desktop.state.in_(HOLDING_STATES))
        .values(state="error", error=f"host {name} was removed from the inventory")
    )
    db.execute(update(Desktop).where(Desktop.host_name == name).values(host_name=None))


def seed_from_config(db: Session, hosts: list[HostSettings]) -> None:
    """Insert configured hosts the inventory does not know yet; known hosts stay as they are."""
    for host in hosts:
        if db.get(Host, host.name) is not None:
            continue
        db.add(
            Host(
                name=host.name,
                provider=host.provider,
                uri=host.uri,
                state="up",
                admin_state="enabled",
                generation=0,
                max_desktops=host.max_desktops,
                labels=dict(host.labels),
                vcpus=host.vcpus,
                memory_mib=host.memory_mib,
                cpu_ratio=host.cpu_ratio,
                ram_ratio=host.ram_ratio,
                images=[],
                console_access=host.console_access,
                ssh_address=host.ssh_address,
                vnc_listen=host.vnc_listen,
            )
        )


def host_settings(db: Session, configured: list[HostSettings]) -> list[HostSettings]:
    """Provider settings for every host in the inventory: the config's when it has the host."""
    by_name = {host.name: host for host in configured}
    rows = db.execute(select(Host.name, Host.provider, Host.uri, Host.vnc_listen).order_by(Host.name)).all()
    return [
        by_name.get(name) or HostSettings(name=name, provider=provider, uri=uri, vnc_listen=listen)
        for name, provider, uri, listen in rows
    ]


def providers_for(hosts: list[HostSettings]) -> dict[str, DesktopProvider]:
    """Each host's desktop provider, by host name (nothing is connected yet)."""
    return {host.name: provider_for(host) for host in hosts}


def update_host_gauges(db: Session) -> None:
    counts = dict.fromkeys(((h.value, a.value) for h in HostHealth for a in HostAdminState), 0)
    for state, admin_state in db.execute(select(Host.state, Host.admin_state)):
        if (state, admin_state) in counts:
            counts[(state, admin_state)] += 1
    for (health, admin_state), count in counts.items():
        HOSTS.labels(health=health, admin_state=admin_state).set(count)


# -- reaching the host -----------------------------------------------------------------------------


def probe(settings: HostSettings) -> DesktopProvider:
    """Connect to the host through its provider (blocking); a 400 on `uri` if it cannot be reached.

    Returns the connected provider, which the broker keeps for the host.
    """
    provider = provider_for(settings)
    try:
        offers = provider.probe()
    except HypervisorError as exc:
        provider.close()
        raise errors.InvalidField(f"uri: the host cannot be reached: {exc.message}", field="uri") from None
    log.info(
        "host %s reachable at %s (%s: %s)",
        settings.name,
        display_uri(settings.uri),
        settings.provider,
        offers,
    )
    return provider
