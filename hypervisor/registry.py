"""Desktop providers by name: what a host's `provider` (config `[[hosts]]`, the `hosts.provider` column)
selects.

Adding a provider is one module with a `DesktopProvider` subclass (hypervisor/provider.py) and one line in
PROVIDERS. Entries are import paths loaded on first use, because libvirt-python loads a C library that the
gateway and most of the command line never need; tests register a class object directly.

This module imports nothing of ours, so the host settings can check names against it without a cycle.
"""

from __future__ import annotations

import importlib

DEFAULT_PROVIDER = "libvirt"

PROVIDERS: dict[str, str | type] = {
    "libvirt": "hypervisor.libvirt_provider:LibvirtProvider",
    "session-host": "hypervisor.session_host:SessionHostProvider",
}


def provider_names() -> list[str]:
    return sorted(PROVIDERS)


def check_provider_name(name: str) -> str:
    """The name itself when a provider is registered under it; ValueError listing the known ones."""
    if name not in PROVIDERS:
        known = ", ".join(provider_names())
        raise ValueError(f"unknown desktop provider {name!r} (known: {known})")
    return name


def provider_class(name: str) -> type:
    """The class registered under `name`, imported now if it is given by path; ValueError if unknown."""
    entry = PROVIDERS[check_provider_name(name)]
    if isinstance(entry, str):
        module, _, attribute = entry.partition(":")
        entry = getattr(importlib.import_module(module), attribute)
    return entry


def register(name: str, cls: type | str) -> None:
    """Add or replace a provider (a class, or "module:Class" to import on first use)."""
    PROVIDERS[name] = cls


def unregister(name: str) -> None:
    PROVIDERS.pop(name, None)
