"""Shared fixtures. Each area's fixtures live in its own plugin module, listed here.

`make test TEST_WORKERS=N` runs the suite on N pytest-xdist workers with `--dist loadgroup` (docs/development.md):
tests go one by one to whichever worker is free, except those of a module with module-scoped fixtures (a
booted desktop, a built image, a deployed role), which go to one worker together so that the fixture is
made once, not once per worker.
"""

import pytest

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


def uses_browser(item: pytest.Item) -> bool:
    return "browser" in getattr(item, "fixturenames", ())


def module_scoped_fixtures(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(d.scope in ("module", "class") for defs in info.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(session, config, items):
    # Once Playwright's sync API starts it keeps an asyncio loop running in the main thread, and
    # asyncio.run() then refuses to start; so every browser test runs after all the others.
    items.sort(key=uses_browser)
    groups = {}
    for item in items:
        if uses_browser(item):
            # On xdist workers the scheduler does not keep that order, so `make test TEST_WORKERS=N` runs
            # the browser tests in a pytest run of their own: `-m "not browser"`, then `-m browser`.
            item.add_marker(pytest.mark.browser)
        if module_scoped_fixtures(item):
            # One group per module, and apart for its browser tests: a group is scheduled where its first
            # test stands, and a browser test must not run before a worker's non-browser tests.
            groups[item] = item.module.__name__ + (".browser" if uses_browser(item) else "")
            item.add_marker(pytest.mark.xdist_group(groups[item]))
    yield
    if getattr(config.option, "loadgroup", False):
        # A worker of `--dist loadgroup` tells the scheduler a test's group as a suffix of its node id.
        # pytest-xdist 3.8 writes it into item._nodeid, which pytest 9.2 no longer reads (the id is item._id
        # now): without this every test would be scheduled on its own and a module's fixture made on each
        # worker at once.
        for item, group in groups.items():
            if not item.nodeid.endswith(f"@{group}"):
                item._id = type(item._id).parse(f"{item.nodeid}@{group}")
