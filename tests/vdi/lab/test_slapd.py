"""The lab's slapd: lifecycle, the demo directory it loads and who may read what in it."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import pytest
from ldap3 import BASE, SUBTREE, Connection, Server

from sso.ldap import LdapAuthenticator
from tests.fixtures.common import free_port
from vdi.lab.slapd import DEMO_GROUPS, DEMO_PASSWORD, DEMO_USERS, Slapd, SlapdError


def connect(slapd: Slapd, dn: str | None = None, password: str | None = None) -> Connection:
    return Connection(Server(slapd.url), user=dn, password=password, auto_bind=True, receive_timeout=5)


def user_dn(slapd: Slapd, uid: str) -> str:
    return f"uid={uid},ou=people,{slapd.suffix}"


def read_attribute(connection: Connection, dn: str, attribute: str) -> list:
    connection.search(dn, "(objectClass=*)", search_scope=BASE, attributes=[attribute])
    return connection.entries[0].entry_attributes_as_dict.get(attribute, [])


def process_exists(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- lifecycle -------------------------------------------------------------------------------------------------


def test_start_twice_is_one_server_and_stop_waits_for_it_to_exit(tmp_path):
    server = Slapd(tmp_path, free_port())
    server.start()
    try:
        pid = int(server.pid_file.read_text())
        server.start()
        assert int(server.pid_file.read_text()) == pid
        # Another handle on the same state directory (another `vdi lab` command) sees and controls it.
        assert Slapd(tmp_path, server.port).healthy()
    finally:
        Slapd(tmp_path, server.port).stop()

    assert not process_exists(pid)
    assert not server.healthy()
    assert "stopped" in server.describe()
    server.stop()  # stopping a stopped server is fine


def test_start_fails_loudly_and_cleanly_when_the_port_is_taken(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server = Slapd(tmp_path, squatter.getsockname()[1])

        with pytest.raises(SlapdError, match="Address already in use"):
            server.start()

    assert not server.healthy()


def test_suffix_must_be_a_dc_name(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        Slapd(tmp_path, free_port(), "ou=people,o=gov")


def test_the_demo_directory_loads_under_any_dc_suffix(tmp_path):
    server = Slapd(tmp_path, free_port(), "dc=example,dc=org")
    server.start()
    authenticator = LdapAuthenticator(server.settings())
    try:
        identity = asyncio.run(authenticator.authenticate("parkjh", DEMO_PASSWORD))
    finally:
        authenticator.close()
        server.stop()

    assert identity.dn == "uid=parkjh,ou=people,dc=example,dc=org"
    assert identity.groups == ["mois", "msit"]


def test_describe_says_where_it_serves(slapd: Slapd):
    assert slapd.healthy()
    assert f"running at {slapd.url}/" in slapd.describe()


# --- secrets ---------------------------------------------------------------------------------------------------


def test_root_password_is_private_and_only_hashed_in_the_config(slapd: Slapd):
    root_password = slapd.root_password()

    for path in (slapd.root_password_file, slapd.conf_file):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert root_password not in slapd.conf_file.read_text()
    assert connect(slapd, slapd.root_dn, root_password).bound


def test_password_hashes_are_salted_and_readable_by_nobody_but_root(slapd: Slapd):
    kimmj, leesy = user_dn(slapd, "kimmj"), user_dn(slapd, "leesy")
    as_root = connect(slapd, slapd.root_dn, slapd.root_password())
    stored = [read_attribute(as_root, dn, "userPassword")[0] for dn in (kimmj, leesy)]

    assert all(value.startswith(b"{SSHA}") for value in stored)
    assert stored[0] != stored[1]  # one password, two salts
    assert read_attribute(connect(slapd), kimmj, "userPassword") == []
    assert read_attribute(connect(slapd, kimmj, DEMO_PASSWORD), kimmj, "userPassword") == []


# --- the demo directory ----------------------------------------------------------------------------------------


def test_ministries_carry_their_korean_names(slapd: Slapd):
    anonymous = connect(slapd)
    anonymous.search(f"ou=groups,{slapd.suffix}", "(objectClass=groupOfNames)", SUBTREE, attributes=["*"])

    found = {entry.cn.value: entry.description.value for entry in anonymous.entries}
    assert set(found) == set(DEMO_GROUPS)
    for cn, korean in DEMO_GROUPS.items():
        assert found[cn].startswith(korean)


def test_demo_users_cover_what_the_demo_needs():
    uids = [user.uid for user in DEMO_USERS]

    assert len(uids) == len(set(uids)) >= 12
    assert any(not user.groups for user in DEMO_USERS)
    assert any(len(user.groups) == 2 for user in DEMO_USERS)
    assert {group for user in DEMO_USERS for group in user.groups} == set(DEMO_GROUPS)


def test_demo_users_are_posix_accounts_with_the_numbers_session_hosts_use(slapd: Slapd):
    # The lab's session hosts make local accounts from DEMO_USERS; production hosts read these entries
    # through nslcd or SSSD, so both must give every user the same uid and gid.
    anonymous = connect(slapd)
    anonymous.search(
        f"ou=people,{slapd.suffix}",
        "(objectClass=posixAccount)",
        SUBTREE,
        attributes=["uid", "uidNumber", "gidNumber", "homeDirectory"],
    )
    found = {
        entry.uid.value: (entry.uidNumber.value, entry.gidNumber.value, entry.homeDirectory.value)
        for entry in anonymous.entries
    }
    expected = {user.uid: (user.uid_number, user.gid_number, f"/home/{user.uid}") for user in DEMO_USERS}
    assert found == expected
    assert len({user.uid_number for user in DEMO_USERS}) == len(DEMO_USERS)
