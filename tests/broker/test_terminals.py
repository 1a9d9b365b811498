"""Registered terminals: by address or by device certificate (mutual TLS with the lab CA), and what a
center's policy does with a login from an unregistered device on its terminal network."""

import ssl
import urllib.error

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent, DesktopSession, SeatReservation
from tests.fixtures.broker_api import signed_in
from tests.fixtures.centers import (
    AWAY_ADDRESS,
    CENTER_ADDRESS,
    INTERNET_ADDRESS,
    TerminalClient,
    add_center,
    at,
    booking,
    login_at,
    tomorrow_at,
)
from tests.fixtures.common import wait_until


def audits(config, *where):
    database = Database(config.database)
    try:
        with database.transaction() as session:
            return session.scalars(select(AuditEvent).where(*where).order_by(AuditEvent.id)).all()
    finally:
        database.close()


def test_register_list_and_remove_terminals_audited(center_admin, centers_config, lab_pki):
    add_center(center_admin)
    by_address = center_admin.post(
        "/api/v1/admin/centers/seoul-station/terminals", json={"name": "b01", "address": CENTER_ADDRESS}
    )
    assert by_address.status == 201, by_address.text
    pem = lab_pki.pki.users["choijw"].cert_path.read_text()
    by_cert = center_admin.post(
        "/api/v1/admin/centers/seoul-station/terminals", json={"name": "b02", "certificate": pem}
    )
    assert by_cert.status == 201, by_cert.text
    assert "CN=choijw" in by_cert.json()["certificate_subject"]
    listed = center_admin.get("/api/v1/admin/centers/seoul-station/terminals").json()["terminals"]
    assert [t["name"] for t in listed] == ["b01", "b02"]
    assert center_admin.request("DELETE", "/api/v1/admin/centers/seoul-station/terminals/b01").status == 204
    actions = [e.action for e in audits(centers_config, AuditEvent.action.like("terminal.%"))]
    assert actions == ["terminal.add", "terminal.add", "terminal.remove"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "b01"}, 400, "body"),  # neither address nor certificate
        ({"name": "b01", "address": "10.20.0.9", "certificate": "x"}, 400, "certificate"),
        ({"name": "b01", "address": "192.0.2.1"}, 400, "address"),  # not on the center's networks
        ({"name": "b01", "address": "ten"}, 400, "address"),
        (
            {"name": "b01", "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"},
            400,
            "certificate",
        ),
        ({"name": "bad name", "address": "10.20.0.9"}, 400, "name"),
    ],
)
def test_bad_terminals_name_the_field(center_admin, body, status, field):
    add_center(center_admin)
    response = center_admin.post("/api/v1/admin/centers/seoul-station/terminals", json=body)
    assert response.status == status, response.text
    assert response.json()["error"].get("field", "body") == field
    assert center_admin.get("/api/v1/admin/centers/seoul-station/terminals").json()["terminals"] == []


def test_refuse_policy_admits_registered_addresses_only(center_admin, centers_url, centers_config):
    add_center(center_admin, unregistered_terminals="refuse")
    center_admin.post(
        "/api/v1/admin/centers/seoul-station/terminals", json={"name": "i01", "address": INTERNET_ADDRESS}
    )
    _client, refused = login_at(centers_url, "choijw", CENTER_ADDRESS)
    assert refused.status == 403
    assert refused.json()["error"]["reason"] == "unregistered_terminal"
    assert (
        "not a registered terminal of Seoul Station Smart Work Center" in refused.json()["error"]["message"]
    )
    (event,) = audits(centers_config, AuditEvent.action == "login", AuditEvent.actor == "choijw")
    assert (event.result, event.detail["reason"]) == ("failure", "unregistered_terminal")
    assert login_at(centers_url, "choijw", INTERNET_ADDRESS)[1].status == 200


def test_limit_policy_gives_unregistered_devices_booked_seats_only(center_admin, centers_url, centers_config):
    add_center(center_admin, unregistered_terminals="limit")
    _client, refused = login_at(centers_url, "choijw", CENTER_ADDRESS)
    assert refused.status == 403 and refused.json()["error"]["reason"] == "unregistered_terminal"
    database = Database(centers_config.database)
    try:
        with database.transaction() as session:
            assert session.scalars(select(SeatReservation)).all() == []
    finally:
        database.close()
    assert (
        signed_in(centers_url, "choijw")
        .post("/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(10)))
        .status
        == 201
    )


def test_a_terminal_is_known_by_its_device_certificate_over_mutual_tls(
    tls_centers_url, tls_centers_config, lab_pki
):
    pki = lab_pki.pki
    admin = TerminalClient(tls_centers_url, pki)
    assert admin.login("kimmj").status == 200
    add_center(admin, unregistered_terminals="refuse")
    pem = pki.users["choijw"].cert_path.read_text()  # the lab CA's certificate serves as a device certificate
    assert (
        admin.post(
            "/api/v1/admin/centers/seoul-station/terminals", json={"name": "b01", "certificate": pem}
        ).status
        == 201
    )
    registered = TerminalClient(tls_centers_url, pki, device="choijw")
    assert registered.login_at("guest01", CENTER_ADDRESS).status == 200
    other = TerminalClient(tls_centers_url, pki, device="kimmj")  # a valid certificate, not a terminal's
    refused = other.login_at("guest01", CENTER_ADDRESS)
    assert refused.status == 403 and refused.json()["error"]["reason"] == "unregistered_terminal"
    assert (
        TerminalClient(tls_centers_url, pki).login_at("guest01", CENTER_ADDRESS).status == 403
    )  # no certificate


@pytest.mark.parametrize("device", ["expired", "unknown-ca"])
def test_an_expired_or_foreign_device_certificate_is_refused_in_the_handshake_and_audited(
    tls_centers_url, tls_centers_config, lab_pki, device
):
    client = TerminalClient(tls_centers_url, lab_pki.pki, device=device)
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        client.login_at("guest01", CENTER_ADDRESS)
    wait_until(
        lambda: audits(tls_centers_config, AuditEvent.action == "login", AuditEvent.result == "failure"),
        10,
        "the refused handshake's audit",
    )
    (event,) = audits(tls_centers_config, AuditEvent.action == "login")
    assert event.detail["stage"] == "tls_handshake"


def register_devices(url, pki, *devices):
    admin = TerminalClient(url, pki)
    assert admin.login("kimmj").status == 200
    add_center(admin, unregistered_terminals="refuse")
    for index, device in enumerate(devices, 1):
        body = {"name": f"b{index:02d}", "certificate": pki.users[device].cert_path.read_text()}
        assert admin.post("/api/v1/admin/centers/seoul-station/terminals", json=body).status == 201


# Password login only, and certificate login on as well: the terminal's certificate is checked either way.
@pytest.mark.parametrize("broker", ["tls_centers", "revocation_centers"])
def test_a_registered_terminal_whose_certificate_is_revoked_is_refused_and_audited(request, lab_pki, broker):
    url = request.getfixturevalue(f"{broker}_url")
    config = request.getfixturevalue(f"{broker}_config")
    pki = lab_pki.pki
    register_devices(url, pki, "choijw", "revoked")
    good = TerminalClient(url, pki, device="choijw").login_at("guest01", CENTER_ADDRESS)
    assert good.status == 200, good.text
    refused = TerminalClient(url, pki, device="revoked").login_at("guest01", CENTER_ADDRESS)
    assert refused.status == 403 and refused.json()["error"]["reason"] == "terminal_certificate_refused"
    assert (
        "certificate of this Seoul Station Smart Work Center terminal is revoked"
        in refused.json()["error"]["message"]
    )
    (event,) = audits(config, AuditEvent.action == "login", AuditEvent.result == "failure")
    # The lab's OCSP responder (a real `openssl ocsp`) said so; its answer names the source.
    assert event.detail["device_certificate"].startswith("revoked (ocsp)")
    assert event.detail["reason"] == "terminal_certificate_refused" and event.source_ip == CENTER_ADDRESS


def test_a_terminal_certificate_whose_status_cannot_be_learnt_is_refused_fail_closed(
    blind_revocation_centers_url, tls_centers_config, lab_pki
):
    url, pki = blind_revocation_centers_url, lab_pki.pki
    register_devices(url, pki, "choijw")
    refused = TerminalClient(url, pki, device="choijw").login_at("guest01", CENTER_ADDRESS)
    assert refused.status == 403 and refused.json()["error"]["reason"] == "terminal_certificate_refused"
    (event,) = audits(tls_centers_config, AuditEvent.action == "login", AuditEvent.result == "failure")
    assert event.detail["device_certificate"].startswith("error")


def test_a_terminal_known_by_its_certificate_says_its_center_off_the_centers_networks(
    tls_toy_centers_url, tls_toy_centers_config, lab_pki
):
    """A terminal behind an address no center lists (a mobile or NAT-ed terminal): its registered device
    certificate says where it is, so the login needs a seat there and the session checks in there."""
    url, pki = tls_toy_centers_url, lab_pki.pki
    register_devices(url, pki, "choijw")
    terminal = TerminalClient(url, pki, device="choijw")
    assert terminal.login_at("choijw", AWAY_ADDRESS).status == 200  # a walk-in seat at the center
    here = terminal.get("/api/v1/centers/here", headers=at(AWAY_ADDRESS)).json()
    assert (here["center"], here["zone"]) == ("seoul-station", "business")
    session = terminal.post("/api/v1/pools/moef-office/connect", headers=at(AWAY_ADDRESS)).json()
    database = Database(tls_toy_centers_config.database)
    try:
        with database.transaction() as db:
            assert db.get(DesktopSession, session["session_id"]).center == "seoul-station"
            (seat,) = db.scalars(select(SeatReservation)).all()
            assert (seat.username, seat.kind) == ("choijw", "walk_in")
    finally:
        database.close()
    (check_in,) = audits(tls_toy_centers_config, AuditEvent.action == "attendance.check_in")
    assert check_in.target == "seoul-station"
    # Another valid certificate, no terminal's, at the same address: not at a center.
    other = TerminalClient(url, pki, device="kimmj")
    assert other.login_at("kimmj", AWAY_ADDRESS).status == 200
    assert other.get("/api/v1/centers/here", headers=at(AWAY_ADDRESS)).json()["center"] is None
