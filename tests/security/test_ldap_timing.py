"""Regression tests for finding 11 of the security review (issue 11): unknown users and timing.

The decoy bind for unknown users targeted a DN that does not exist, so a directory with slow password
hashing answered unknown users faster than known ones. The figures are `vdi bench login-timing`'s; these
tests pin the two mechanisms that make the answers alike.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from ldap3 import BASE, Connection, Server

from sso.base import InvalidCredentials
from sso.ldap import LdapAuthenticator


def test_finding_11_unknown_users_are_bound_against_a_real_decoy_entry(
    slapd, make_authenticator, monkeypatch
):
    settings = slapd.settings().model_copy(update={"refusal_floor_s": 0.0})
    authenticator = make_authenticator(settings)
    bound: list[str] = []
    real_bind = LdapAuthenticator._bind

    def recording_bind(self, dn: str, password: str):
        bound.append(dn)
        return real_bind(self, dn, password)

    monkeypatch.setattr(LdapAuthenticator, "_bind", recording_bind)
    with pytest.raises(InvalidCredentials):
        asyncio.run(authenticator.authenticate("no-such-person", "a-guess"))

    assert bound == [settings.decoy_dn]
    # The entry exists, so the directory checks a password hash for it as it does for a real user.
    with Connection(Server(slapd.url), slapd.root_dn, slapd.root_password(), auto_bind=True) as admin:
        assert admin.search(settings.decoy_dn, "(objectClass=*)", BASE)
    # ... and no user search finds it: it is nobody's account.
    with pytest.raises(InvalidCredentials):
        asyncio.run(authenticator.authenticate("login-decoy", "a-guess"))


@pytest.mark.parametrize("username", ["kimmj", "no-such-person"])
def test_finding_11_every_refusal_answers_after_the_floor(slapd, make_authenticator, username):
    floor_s = 0.3
    authenticator = make_authenticator(slapd.settings().model_copy(update={"refusal_floor_s": floor_s}))
    started = time.monotonic()
    with pytest.raises(InvalidCredentials):
        asyncio.run(authenticator.authenticate(username, "a-guess"))
    assert time.monotonic() - started >= floor_s
