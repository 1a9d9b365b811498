"""LDAP robustness: default timeouts, a reused service connection that survives a dropped link, and
filter escaping, against the real slapd."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest

from sso.base import AuthError, DirectoryUnavailable, InvalidCredentials
from sso.config import LdapSettings
from sso.ldap import LdapAuthenticator
from tests.fixtures.common import free_port
from vdi.lab.slapd import DEMO_PASSWORD, Slapd

NO_HANG_S = 5.0  # a generous bound: the point is "returned", not a timing benchmark


class DroppingProxy:
    """A TCP forwarder to slapd that can drop every open connection, as a restarted directory or a
    firewall forgetting an idle flow would."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def drop_all(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._sockets.clear()

    def close(self) -> None:
        self.listener.close()
        self.drop_all()


def settings_for(ldap_settings: LdapSettings, url: str) -> LdapSettings:
    # timeout_s is left at its default: that default is what must keep a login from hanging.
    return LdapSettings.model_validate(ldap_settings.model_dump() | {"url": url})


def timed_refusal(authenticator: LdapAuthenticator, username: str, password: str) -> tuple[AuthError, float]:
    started = time.monotonic()
    with pytest.raises(AuthError) as caught:
        asyncio.run(authenticator.authenticate(username, password))
    return caught.value, time.monotonic() - started


def test_the_default_timeout_is_two_seconds():
    assert LdapSettings(user_base="dc=x", group_base="dc=x").timeout_s == 2.0


def test_a_silent_directory_is_unavailable_not_a_hang(ldap_settings, make_authenticator):
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"ldap://127.0.0.1:{silent.getsockname()[1]}"
        refused, elapsed = timed_refusal(
            make_authenticator(settings_for(ldap_settings, url)), "kimmj", DEMO_PASSWORD
        )
    assert isinstance(refused, DirectoryUnavailable)
    assert "unavailable" in refused.reason and DEMO_PASSWORD not in refused.reason
    assert elapsed < NO_HANG_S


class GarbageServer:
    """Something that is not a directory listening where the directory should be: it answers any bytes
    with bytes that are not LDAP."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with client, contextlib.suppress(OSError):
                client.recv(4096)
                client.sendall(b"\x30\x0c\x02\x01\x01\x7f\x07garbage" + b"HTTP/1.0 400 Bad Request\r\n\r\n")

    def close(self) -> None:
        self.listener.close()


def test_a_peer_that_is_not_a_directory_is_unavailable(ldap_settings, make_authenticator):
    server = GarbageServer()
    try:
        refused, _ = timed_refusal(
            make_authenticator(settings_for(ldap_settings, f"ldap://127.0.0.1:{server.port}")),
            "kimmj",
            DEMO_PASSWORD,
        )
    finally:
        server.close()
    assert isinstance(refused, DirectoryUnavailable)
    assert DEMO_PASSWORD not in refused.reason


def test_a_closed_port_is_unavailable_at_once(ldap_settings, make_authenticator):
    url = f"ldap://127.0.0.1:{free_port()}"
    refused, elapsed = timed_refusal(
        make_authenticator(settings_for(ldap_settings, url)), "kimmj", DEMO_PASSWORD
    )
    assert isinstance(refused, DirectoryUnavailable)
    assert elapsed < NO_HANG_S


def test_the_service_connection_is_reused_and_replaced_when_dropped(
    slapd: Slapd, ldap_settings, make_authenticator
):
    proxy = DroppingProxy(slapd.port)
    try:
        authenticator = make_authenticator(settings_for(ldap_settings, f"ldap://127.0.0.1:{proxy.port}"))
        for _ in range(3):
            asyncio.run(authenticator.authenticate("kimmj", DEMO_PASSWORD))
        # One service connection for all three, and one connection for the three users' binds.
        assert proxy.accepted == 1 + 1

        proxy.drop_all()
        identity = asyncio.run(authenticator.authenticate("leesy", DEMO_PASSWORD))
        assert identity.username == "leesy"
        assert proxy.accepted == 2 + 2  # both were replaced
        # A wrong password on the kept bind connection is refused, and the next right one still works.
        with pytest.raises(InvalidCredentials):
            asyncio.run(authenticator.authenticate("kimmj", "not the password"))
        assert asyncio.run(authenticator.authenticate("kimmj", DEMO_PASSWORD)).username == "kimmj"
        assert proxy.accepted == 2 + 2
    finally:
        proxy.close()


@pytest.mark.parametrize("crafted", ["*", "kim*", "kimmj)(uid=*", "*)(|(uid=*", "kimmj\\2a", "kimmj\x00"])
def test_filter_metacharacters_in_a_user_name_match_nothing(ldap_authenticator, crafted):
    # RFC 4515 section 3: *, (, ), \ and NUL are escaped, so none of these can widen the search.
    refused, _ = timed_refusal(ldap_authenticator, crafted, DEMO_PASSWORD)
    assert isinstance(refused, InvalidCredentials)
