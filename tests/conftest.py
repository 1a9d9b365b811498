"""Shared fixtures. Each area's fixtures live in its own plugin module, listed here."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.libvirt",
    "tests.fixtures.ldap",
    "tests.fixtures.gateway",
    "tests.fixtures.broker",
    "tests.fixtures.e2e",
]
