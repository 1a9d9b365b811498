"""Pools of kind session and app through the broker's API, on the lab's real session hosts sh1 and sh2.

Placement chooses the session host (labels, max_desktops as the host's session limit); the session-host provider
starts Xvnc as the user's own account. Reconnect goes back to the live session, logoff destroys it, and a
session that ended by itself (the user logged out, or closed the published application) is removed by the host
monitor like a logoff, or replaced at the next connect if that comes first. The tests that kill a host's sshd
or cut its network do it to a session host of their own (sh6, sh7), never to sh1/sh2.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from broker.config import PoolSettings
from broker.db import Database
from broker.db.models import Desktop, Host
from hypervisor.session_host import SessionHostProvider
from sso.base import Identity
from tests.fixtures.broker import COOKIE_SECRET, FakeAuthenticator, make_broker_config
from tests.fixtures.broker_api import connect, logoff, signed_in
from tests.fixtures.common import wait_until
from tests.fixtures.lab_hosts import own_lab_hosts
from tests.fixtures.monitor import MonitorRunner, audit_actions, row
from tests.fixtures.session_hosts import session_host_settings, session_spec
from vdi.lab.session_hosts import LabSessionHosts

HOSTS = ("sh1", "sh2")
BROKER = {"cookie_secret": COOKIE_SECRET, "gateway_url": "ws://127.0.0.1:9/ws"}
MOIS = ["mois"]
USERS = {
    name: Identity(name, name, f"uid={name},ou=people,dc=test", MOIS)
    for name in ("kimmj", "leesy", "parkjh", "nosuchuser")
}
POOLS = [
    {
        "name": "mois-desktop",
        "display_name": "행정안전부 SBC 데스크톱",
        "groups": MOIS,
        "kind": "session",
        "required_labels": {"provider": "session-host"},
        "window_manager": ["openbox"],
        "session_command": ["xterm"],
        "cpu_limit": 1.0,
        "memory_limit_mib": 512,
    },
    {
        "name": "mois-terminal",
        "display_name": "터미널 (앱)",
        "groups": MOIS,
        "kind": "app",
        "required_labels": {"provider": "session-host"},
        "app_command": ["xterm", "-maximized"],
    },
    {
        "name": "mois-broken",
        "display_name": "시작하지 않는 앱",
        "groups": MOIS,
        "kind": "app",
        "required_labels": {"provider": "session-host"},
        "app_command": ["false"],  # exits at once
    },
]


@pytest.fixture
def providers(lab_session_hosts):
    made = {name: SessionHostProvider(session_host_settings(lab_session_hosts, name)) for name in HOSTS}
    yield made
    for provider in made.values():
        for session in provider.list_desktops():  # whatever a failed test left
            provider.destroy_desktop(session)
        provider.close()


def sbc_config(tmp_path, lab_session_hosts, **sections):
    """sh1 and sh2 with one session each at most, the two pools, a database in tmp_path."""
    hosts = [
        session_host_settings(
            lab_session_hosts, name, max_desktops=1, labels={"provider": "session-host"}
        ).model_dump(exclude_none=True)
        for name in HOSTS
    ]
    return make_broker_config(tmp_path / "broker.db", hosts=hosts, pools=POOLS, **sections)


@pytest.fixture
def sbc_url(tmp_path, broker_server, lab_session_hosts, providers):
    return broker_server(sbc_config(tmp_path, lab_session_hosts), authenticator=FakeAuthenticator(USERS))


def where(providers, desktop: str) -> list[str]:
    """The session hosts that hold the desktop (the hosts' own answer)."""
    return [name for name, provider in providers.items() if desktop in provider.list_desktops()]


def test_connect_reconnect_and_logoff_of_a_session(sbc_url, providers):
    kim = signed_in(sbc_url, "kimmj")
    first = connect(kim, "mois-desktop")
    desktop = first["desktop"]["name"]
    [host] = where(providers, desktop)
    session = next(s for s in providers[host].sessions() if s.name == desktop)
    assert (session.user, session.kind, session.running) == ("kimmj", "session", True)

    # Reconnect first: the same session, from this browser and from another one.
    assert connect(kim, "mois-desktop")["session_id"] == first["session_id"]
    again = connect(signed_in(sbc_url, "kimmj"), "mois-desktop")
    assert (again["session_id"], again["desktop"]["name"]) == (first["session_id"], desktop)
    assert where(providers, desktop) == [host]

    logoff(kim, first["session_id"])
    assert where(providers, desktop) == []
    assert connect(kim, "mois-desktop")["desktop"]["name"] != desktop


def test_max_desktops_is_the_hosts_session_limit(sbc_url, providers):
    kim, lee, park = (signed_in(sbc_url, user) for user in ("kimmj", "leesy", "parkjh"))
    first, second = connect(kim, "mois-desktop"), connect(lee, "mois-desktop")
    hosts = where(providers, first["desktop"]["name"]) + where(providers, second["desktop"]["name"])
    assert sorted(hosts) == ["sh1", "sh2"]  # one session each, the most either takes

    full = park.post("/api/v1/pools/mois-desktop/connect")
    assert full.status == 503 and full.json()["error"]["reason"] == "no_capacity", full.text

    freed = where(providers, first["desktop"]["name"])
    logoff(kim, first["session_id"])
    assert where(providers, connect(park, "mois-desktop")["desktop"]["name"]) == freed


def test_an_app_session_that_ended_is_replaced_at_the_next_connect(sbc_url, providers, lab_session_hosts):
    lee = signed_in(sbc_url, "leesy")
    first = connect(lee, "mois-terminal")
    desktop = first["desktop"]["name"]
    [host] = where(providers, desktop)
    app_pid = (lab_session_hosts.sessions_dir(host) / desktop / "app.pid").read_text().strip()
    assert lab_session_hosts.run(host, ["kill", app_pid]).returncode == 0  # the user closed the application
    wait_until(lambda: providers[host].desktop_state(desktop) == "shutoff", 10, "the session to end")

    second = connect(lee, "mois-terminal")
    assert second["desktop"]["name"] != desktop
    assert where(providers, desktop) == []  # the ended session was cleaned away


def test_a_session_that_ended_on_its_host_is_removed_like_a_logoff_and_frees_its_slot(
    tmp_path, sbc_url, providers, lab_session_hosts
):
    config = sbc_config(tmp_path, lab_session_hosts)
    runner = MonitorRunner(config, providers)
    try:
        kim = signed_in(sbc_url, "kimmj")
        first = connect(kim, "mois-terminal")
        desktop = first["desktop"]["name"]
        [host] = where(providers, desktop)
        app_pid = (lab_session_hosts.sessions_dir(host) / desktop / "app.pid").read_text().strip()
        assert (
            lab_session_hosts.run(host, ["kill", app_pid]).returncode == 0
        )  # the user closed the application

        def ended() -> bool:
            return kim.get(f"/api/v1/sessions/{first['session_id']}").json()["state"] == "ended"

        wait_until(ended, 30, "the monitor to end the session")
        session = kim.get(f"/api/v1/sessions/{first['session_id']}").json()
        assert session["desktop"]["state"] == "deleted"
        assert where(providers, desktop) == []  # Xvnc and all else of the session removed from the host
        [event] = audit_actions(runner.db, "session_ended")
        assert (event.actor, event.target, event.detail["desktop"]) == ("monitor", "mois-terminal", desktop)
    finally:
        runner.stop()
    # Its slot is free: both hosts (one session each at most) take a session again.
    lee = signed_in(sbc_url, "leesy")
    placed = {where(providers, connect(user, "mois-desktop")["desktop"]["name"])[0] for user in (kim, lee)}
    assert placed == set(HOSTS)


def test_a_user_without_an_account_on_the_hosts_gets_a_clear_error(sbc_url, providers):
    nobody = signed_in(sbc_url, "nosuchuser")
    response = nobody.post("/api/v1/pools/mois-desktop/connect")
    assert response.status == 503, response.text
    assert "has no account nosuchuser" in response.json()["error"]["message"]
    assert all(provider.list_desktops() == [] for provider in providers.values())


def test_an_application_that_fails_to_start_is_a_clear_error_audited_and_leaves_nothing(
    tmp_path, sbc_url, providers, lab_session_hosts
):
    kim = signed_in(sbc_url, "kimmj")
    response = kim.post("/api/v1/pools/mois-broken/connect")
    assert response.status == 503, response.text
    message = response.json()["error"]["message"]
    [host] = [name for name in HOSTS if name in message]  # names the host
    assert "exited at once" in message, message
    # Nothing of the session is left on either host: no state directory, display, cgroup or process.
    assert all(provider.list_desktops() == [] for provider in providers.values())
    assert not [p for p in lab_session_hosts.sessions_dir(host).iterdir() if p.name != ".displays"]
    assert not list((lab_session_hosts.sessions_dir(host) / ".displays").iterdir())
    # The session's processes were sent SIGKILL; they are gone once the kernel has reaped them.
    wait_until(
        lambda: (
            "false" not in lab_session_hosts.run(host, ["ps", "-o", "comm=", "-u", "kimmj"]).stdout.split()
        ),
        10,
        "the failed application's process to be gone",
    )
    db = Database(sbc_config(tmp_path, lab_session_hosts).database)
    try:
        [event] = [e for e in audit_actions(db, "connect") if e.result == "error"]
        assert (event.actor, event.target) == ("kimmj", "mois-broken")
        assert "exited at once" in event.detail["error"] and host in event.detail["error"]
        assert not [key for key in event.detail if "password" in key]
        with db.transaction() as session:
            assert session.scalars(select(Desktop.state)).all() == ["error"]
    finally:
        db.close()
    # Its slot is free again: both hosts (one session each at most) still take a session.
    lee = signed_in(sbc_url, "leesy")
    placed = {where(providers, connect(user, "mois-desktop")["desktop"]["name"])[0] for user in (kim, lee)}
    assert placed == set(HOSTS)


def fault_marks_the_host_down_and_up_again(
    tmp_path, broker_server, name: str, octet: int, inject, heal
) -> None:
    """On a session host of the test's own (faults must not reach the shared sh1/sh2, where other tests keep
    their sessions meanwhile), with the monitor as shipped (poll every 5 s, down after 15 s; 30 s is the
    production bound): `inject(hosts)` gets the host marked down and its session lost, `heal(hosts)` up."""
    with own_lab_hosts(tmp_path / "lab", [name], octet, kind=LabSessionHosts) as hosts:
        settings = session_host_settings(hosts, name, labels={"provider": "session-host"})
        provider = SessionHostProvider(settings)
        providers = {name: provider}
        config = make_broker_config(
            tmp_path / "broker.db", hosts=[settings.model_dump(exclude_none=True)], pools=POOLS
        )
        url = broker_server(config, authenticator=FakeAuthenticator(USERS), providers=providers)
        runner = MonitorRunner(config, providers)
        db = runner.db
        try:
            kim = signed_in(url, "kimmj")
            first = connect(kim, "mois-desktop")
            wait_until(lambda: row(db, Host, name).cpu_load is not None, 30, f"a health sample of {name}")
            inject(hosts)
            try:
                wait_until(lambda: row(db, Host, name).state == "down", 30, f"{name} marked down")
                session = kim.get(f"/api/v1/sessions/{first['session_id']}").json()
                assert (session["state"], session["desktop"]["state"]) == ("ended", "lost")
            finally:
                heal(hosts)
            wait_until(lambda: row(db, Host, name).state == "up", 30, f"{name} marked up again")
        finally:
            runner.stop()
            provider.close()


def test_a_session_host_whose_sshd_is_killed_is_marked_down_in_time(tmp_path, broker_server):
    # Its connections drop and new ones are refused; up() starts sshd again.
    fault_marks_the_host_down_and_up_again(
        tmp_path, broker_server, "sh6", 26, lambda hosts: hosts.kill_sshd("sh6"), lambda hosts: hosts.up()
    )


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"kind": "app"}, "app_command"),
        ({"kind": "floating", "app_command": ["xterm"]}, "app_command"),
        ({"kind": "dedicated", "window_manager": ["openbox"]}, "window_manager"),
        ({"kind": "app", "app_command": ["xterm"], "session_command": ["xterm"]}, "session_command"),
        ({"kind": "session", "spares": 1}, "spares"),
        ({"kind": "session", "min_size": 2}, "min_size"),
        ({"kind": "session", "cpu_limit": 0}, "cpu_limit"),
        ({"kind": "session", "session_command": ["startxfce4", " "]}, "session_command"),
    ],
)
def test_bad_session_settings_are_refused_naming_the_key(settings, key):
    with pytest.raises(ValidationError, match=key):
        PoolSettings(name="p", display_name="p", groups=MOIS, **settings)


def test_a_session_of_another_user_gets_no_console_token(sbc_url, providers):
    kim, lee = signed_in(sbc_url, "kimmj"), signed_in(sbc_url, "leesy")
    kim_session = connect(kim, "mois-desktop")["session_id"]
    connect(lee, "mois-desktop")
    # leesy holds a valid portal session and a desktop session of her own: still no token for kimmj's.
    refused = lee.post(f"/api/v1/sessions/{kim_session}/console-token")
    assert refused.status == 404 and refused.json()["error"]["reason"] == "unknown_session", refused.text
    assert kim.post(f"/api/v1/sessions/{kim_session}/console-token").status == 200


def test_a_session_host_that_drops_off_the_network_is_marked_down_in_time(tmp_path, broker_server):
    # Packets to the host vanish: nothing refuses, only the SSH timeouts tell.
    fault_marks_the_host_down_and_up_again(
        tmp_path,
        broker_server,
        "sh7",
        27,
        lambda hosts: hosts.cut_network("sh7"),
        lambda hosts: hosts.restore_network("sh7"),
    )


def test_another_broker_on_the_same_database_returns_the_user_to_the_live_session(
    sbc_url, tmp_path, broker_server, lab_session_hosts, providers
):
    kim = signed_in(sbc_url, "kimmj")
    first = connect(kim, "mois-desktop")
    # A second broker of the same deployment (same configuration and database, its own providers).
    other = broker_server(sbc_config(tmp_path, lab_session_hosts), authenticator=FakeAuthenticator(USERS))
    again = connect(signed_in(other, "kimmj"), "mois-desktop")
    assert (again["session_id"], again["desktop"]["name"]) == (first["session_id"], first["desktop"]["name"])


def test_reconcile_reports_a_session_the_database_does_not_know(
    tmp_path, broker_server, lab_session_hosts, providers
):
    config = sbc_config(tmp_path, lab_session_hosts)
    broker_server(config, authenticator=FakeAuthenticator(USERS), providers=providers)  # seeds the inventory
    stray = session_spec("leesy")
    providers["sh1"].create_desktop(stray)  # started behind the broker's back
    runner = MonitorRunner(config, providers)
    try:
        wait_until(
            lambda: any(
                e.detail.get("domain") == stray.domain_name for e in audit_actions(runner.db, "orphan_domain")
            ),
            30,
            "the orphan report",
        )
    finally:
        runner.stop()
    assert (
        stray.domain_name in providers["sh1"].list_desktops()
    )  # reported, not destroyed (orphans = "report")


def test_a_session_pool_has_no_image_to_roll_out(tmp_path, broker_server, lab_session_hosts):
    config = sbc_config(tmp_path, lab_session_hosts, broker={**BROKER, "admin_groups": MOIS})
    admin = signed_in(broker_server(config, authenticator=FakeAuthenticator(USERS)), "kimmj")
    refused = admin.post("/api/v1/admin/pools/mois-desktop/rollouts", json={"version": "v2", "canary": "1"})
    assert refused.status == 400, refused.text
    assert (
        refused.json()["error"]["field"] == "pool"
        and "start from no image" in refused.json()["error"]["message"]
    )
