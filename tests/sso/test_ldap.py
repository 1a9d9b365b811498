"""Password login against the lab's real slapd loaded with the demo directory."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from sso.base import AuthError, DirectoryUnavailable, Identity, InvalidCredentials
from sso.config import LdapSettings
from sso.ldap import LdapAuthenticator
from tests.fixtures.common import free_port
from vdi.lab.slapd import DEMO_PASSWORD, DEMO_USERS, DemoUser, Slapd

WRONG_PASSWORD = "Wr0ng-비밀번호-7319"


def login(authenticator: LdapAuthenticator, username: str, password: str) -> Identity:
    return asyncio.run(authenticator.authenticate(username, password))


def refusal(authenticator: LdapAuthenticator, username: str, password: str) -> AuthError:
    with pytest.raises(AuthError) as caught:
        login(authenticator, username, password)
    return caught.value


def with_changes(settings: LdapSettings, **changes) -> LdapSettings:
    return LdapSettings.model_validate(settings.model_dump() | changes)


@pytest.fixture
def silent_directory_url() -> Iterator[str]:
    """A port that completes TCP handshakes (the kernel's backlog) but never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"ldap://127.0.0.1:{listener.getsockname()[1]}"


# --- who gets in, as whom --------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", DEMO_USERS, ids=lambda user: user.uid)
def test_every_demo_user_logs_in_with_korean_name_and_ministries(ldap_authenticator, user: DemoUser):
    identity = login(ldap_authenticator, user.uid, user.password)

    assert identity.username == user.uid
    assert identity.display_name == user.display_name
    assert identity.groups == sorted(user.groups)
    assert identity.dn.startswith(f"uid={user.uid},ou=people,")


def test_a_user_seconded_to_two_ministries_gets_both(ldap_authenticator):
    identity = login(ldap_authenticator, "parkjh", DEMO_PASSWORD)

    assert identity.display_name == "박지훈"
    assert identity.groups == ["mois", "msit"]


def test_the_guest_is_in_no_ministry(ldap_authenticator):
    identity = login(ldap_authenticator, "guest01", DEMO_PASSWORD)

    assert identity.groups == []


def test_user_name_matches_case_insensitively_and_comes_back_as_stored(ldap_authenticator):
    identity = login(ldap_authenticator, "  KimMJ ", DEMO_PASSWORD)

    assert identity.username == "kimmj"


def test_service_account_finds_users_when_configured(ldap_settings, slapd: Slapd, make_authenticator):
    settings = with_changes(ldap_settings, bind_dn=slapd.root_dn, bind_password=slapd.root_password())

    identity = login(make_authenticator(settings), "choijw", DEMO_PASSWORD)

    assert identity.groups == ["moef"]


# --- who does not, and what they are told ----------------------------------------------------------------------


def test_wrong_password_and_unknown_user_get_the_same_answer(ldap_authenticator):
    wrong_password = refusal(ldap_authenticator, "kimmj", WRONG_PASSWORD)
    unknown_user = refusal(ldap_authenticator, "nosuchuser", WRONG_PASSWORD)

    assert type(wrong_password) is type(unknown_user) is InvalidCredentials
    assert wrong_password.public_message == unknown_user.public_message
    assert wrong_password.status == unknown_user.status == 401
    # Only the log and audit trail may tell them apart.
    assert (wrong_password.reason, unknown_user.reason) == ("wrong password", "unknown user")


def test_an_unknown_user_costs_the_directory_a_bind_like_a_known_one(ldap_authenticator, slapd: Slapd):
    # Timing would otherwise tell "no such user" (one search) from "wrong password" (search and bind).
    def binds_during(username: str) -> list[str]:
        before = len(slapd.log_file.read_text().splitlines())
        refusal(ldap_authenticator, username, WRONG_PASSWORD)
        logged = slapd.log_file.read_text().splitlines()[before:]
        return [line for line in logged if " BIND dn=" in line and "method=128" in line]  # simple binds

    assert len(binds_during("kimmj")) == len(binds_during("nosuchuser")) == 1


def test_an_ambiguous_user_is_refused_like_an_unknown_one(ldap_settings, make_authenticator):
    # Every demo user matches objectClass=inetOrgPerson: a user attribute that does not identify anyone.
    settings = with_changes(ldap_settings, user_attr="objectClass")

    refused = refusal(make_authenticator(settings), "inetOrgPerson", DEMO_PASSWORD)

    assert isinstance(refused, InvalidCredentials)
    assert refused.public_message == InvalidCredentials.public_message
    assert refused.reason.startswith("ambiguous user")


@pytest.mark.parametrize(
    "username",
    ["*", "kim*", "*)(uid=*", ")(uid=*", "kimmj)(|(uid=*", "\\", "kimmj\\", "(uid=kimmj)", "kimmj\x00"],
)
def test_filter_metacharacters_match_nobody(ldap_authenticator, username: str):
    # With the right demo password, any user the filter matched would log in (or be "ambiguous").
    refused = refusal(ldap_authenticator, username, DEMO_PASSWORD)

    assert isinstance(refused, InvalidCredentials)
    assert refused.reason == "unknown user"


@pytest.mark.parametrize("password", ["", None])
def test_empty_password_never_binds(ldap_authenticator, password):
    # An LDAP simple bind with a DN and no password is an anonymous bind that some servers call a success.
    refused = refusal(ldap_authenticator, "kimmj", password)

    assert isinstance(refused, InvalidCredentials)


def test_a_directory_that_is_down_answers_unavailable_within_the_timeout(ldap_settings, make_authenticator):
    settings = with_changes(ldap_settings, url=f"ldap://127.0.0.1:{free_port()}", timeout_s=2)
    started = time.monotonic()

    refused = refusal(make_authenticator(settings), "kimmj", DEMO_PASSWORD)

    assert time.monotonic() - started < settings.timeout_s
    assert isinstance(refused, DirectoryUnavailable)
    assert refused.status == 503
    assert settings.url in refused.reason


def test_a_directory_that_never_answers_times_out(ldap_settings, silent_directory_url, make_authenticator):
    settings = with_changes(ldap_settings, url=silent_directory_url, timeout_s=1)
    started = time.monotonic()

    refused = refusal(make_authenticator(settings), "kimmj", DEMO_PASSWORD)

    # One receive timeout for the first request, with room for a slow machine; without one it would hang.
    assert time.monotonic() - started < 3 * settings.timeout_s
    assert isinstance(refused, DirectoryUnavailable)
    assert "timed out" in refused.reason


def test_a_wrong_user_base_is_a_directory_problem_not_an_unknown_user(ldap_settings, make_authenticator):
    settings = with_changes(ldap_settings, user_base="ou=nowhere,dc=smartwork,dc=go,dc=kr")

    refused = refusal(make_authenticator(settings), "kimmj", DEMO_PASSWORD)

    assert isinstance(refused, DirectoryUnavailable)
    assert "ou=nowhere" in refused.reason


def test_a_refused_service_account_is_a_directory_problem(ldap_settings, slapd: Slapd, make_authenticator):
    settings = with_changes(ldap_settings, bind_dn=slapd.root_dn, bind_password="not-the-root-password")

    refused = refusal(make_authenticator(settings), "kimmj", DEMO_PASSWORD)

    assert isinstance(refused, DirectoryUnavailable)
    assert slapd.root_dn in refused.reason


# --- secrets and the event loop ---------------------------------------------------------------------------------


def test_passwords_never_reach_logs_or_errors(ldap_settings, slapd, make_authenticator, caplog):
    caplog.set_level(logging.DEBUG)
    service_password = "svc-S3cret-5521"
    anonymous = make_authenticator(ldap_settings)
    down = make_authenticator(with_changes(ldap_settings, url=f"ldap://127.0.0.1:{free_port()}"))
    bad_service = make_authenticator(
        with_changes(ldap_settings, bind_dn=slapd.root_dn, bind_password=service_password)
    )

    login(anonymous, "kimmj", DEMO_PASSWORD)
    refusals = [
        refusal(anonymous, "kimmj", WRONG_PASSWORD),
        refusal(anonymous, "nosuchuser", WRONG_PASSWORD),
        refusal(down, "kimmj", WRONG_PASSWORD),
        refusal(bad_service, "kimmj", WRONG_PASSWORD),
    ]

    told = caplog.text + "".join(f"{e} {e!r} {e.reason} {e.public_message}" for e in refusals)
    told += repr(bad_service) + repr(bad_service.settings)
    for secret in (DEMO_PASSWORD, WRONG_PASSWORD, service_password):
        assert secret not in told
    # The refusals were logged, with the user name: the test would pass vacuously otherwise.
    assert caplog.text.count("password login refused for 'kimmj'") == 3


def test_logins_run_off_the_event_loop(ldap_authenticator):
    users = DEMO_USERS[:6]

    async def scenario() -> tuple[int, list[Identity]]:
        logins = [asyncio.create_task(ldap_authenticator.authenticate(u.uid, u.password)) for u in users]
        # One turn of the loop: every login has started. Had one blocked the loop, it would already be
        # finished by the time this coroutine runs again.
        await asyncio.sleep(0)
        still_running = sum(not task.done() for task in logins)
        return still_running, await asyncio.gather(*logins)

    still_running, identities = asyncio.run(scenario())

    assert still_running == len(users)
    assert [identity.username for identity in identities] == [u.uid for u in users]
