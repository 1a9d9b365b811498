"""Shared fixtures. Each area's fixtures live in its own plugin module, listed here."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.database",
    "tests.fixtures.libvirt",
    "tests.fixtures.ldap",
    "tests.fixtures.gateway",
    "tests.fixtures.broker",
    "tests.fixtures.broker_api",
    "tests.fixtures.centers",
    "tests.fixtures.accessibility",
    "tests.fixtures.e2e",
    "tests.fixtures.pki",
    "tests.fixtures.login_security",
    "tests.fixtures.login_methods",
    "tests.fixtures.sshd",
    "tests.fixtures.lab_hosts",
    "tests.fixtures.toy_provider",
    "tests.fixtures.session_hosts",
    "tests.fixtures.recordings",
    "tests.fixtures.admin_console",
    "tests.fixtures.ha",
    "tests.fixtures.sbc_stack",
]


def pytest_collection_modifyitems(session, config, items):
    # Once Playwright's sync API starts it keeps an asyncio loop running in the main thread, and
    # asyncio.run() then refuses to start; so every browser test runs after all the others.
    items.sort(key=lambda item: "browser" in getattr(item, "fixturenames", ()))
