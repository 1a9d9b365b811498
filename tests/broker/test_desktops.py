"""broker/desktops.py: each new desktop's VNC password, and the console policy its tokens carry."""

from __future__ import annotations

import logging

from sqlalchemy import select

from broker.db import Database
from broker.db.models import ConsoleToken, Desktop
from broker.db.vnc_passwords import PASSWORD_LENGTH, VncPasswordBox
from tests.fixtures.broker import BrokerClient, make_broker_config, seed_session
from tests.fixtures.common import VNC_PASSWORD_KEY


def test_a_new_desktop_gets_its_own_password_sealed_in_its_row_and_in_the_spec(
    client, broker_db, unreachable_providers, caplog
):
    caplog.set_level(logging.DEBUG)
    response = client.post("/api/v1/pools/mois-office/connect")
    assert response.status == 503  # the fake host is unreachable; the row and the spec are made first
    [spec] = unreachable_providers["local"].specs
    with broker_db.transaction() as db:
        desktop = db.scalars(select(Desktop)).one()
        sealed, domain_name = desktop.vnc_password_sealed, desktop.domain_name
    assert len(spec.vnc_password) == PASSWORD_LENGTH
    assert VncPasswordBox(VNC_PASSWORD_KEY).open(domain_name, sealed) == spec.vnc_password
    assert spec.vnc_password not in sealed and spec.vnc_password not in repr(spec)
    assert spec.vnc_password not in response.text
    assert all(spec.vnc_password not in record.getMessage() for record in caplog.records)


def test_without_a_key_desktops_get_no_password(
    tmp_path, broker_server, fake_authenticator, unreachable_providers
):
    config = make_broker_config(tmp_path / "nokey.db")
    config.broker.vnc_password_key = None
    client = BrokerClient(
        broker_server(config, authenticator=fake_authenticator, providers=unreachable_providers)
    )
    client.login("kimmj")
    client.post("/api/v1/pools/mois-office/connect")
    assert [spec.vnc_password for spec in unreachable_providers["local"].specs] == [None]


def test_console_tokens_carry_the_pools_clipboard_and_recording_policy(
    tmp_path, broker_server, fake_authenticator
):
    pool = {"name": "mois-office", "display_name": "업무용", "groups": ["mois"]}
    pool |= {"clipboard": "to_desktop", "clipboard_max_bytes": 2048, "clipboard_text_only": True}
    pool |= {"recording": "required"}
    config = make_broker_config(tmp_path / "policy.db", pools=[pool])
    client = BrokerClient(broker_server(config, authenticator=fake_authenticator, providers={}))
    client.login("kimmj")
    db = Database(config.database)
    try:
        session_id, _ = seed_session(db, "kimmj", "mois-office", vnc_port=5907)
        assert client.post(f"/api/v1/sessions/{session_id}/console-token").status == 200
        with db.transaction() as s:
            policy = s.scalars(select(ConsoleToken.policy)).one()
    finally:
        db.close()
    assert policy == {
        "clipboard": "to_desktop",
        "clipboard_max_bytes": 2048,
        "clipboard_text_only": True,
        "recording": "required",
        # The network zones (docs/centers.md): the pool's, and none for a client away from the centers.
        "zone": "business",
        "client_zone": None,
        "cross_zone_clipboard": False,
    }
