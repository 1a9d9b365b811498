"""Smart work centers through /api/v1/admin/centers and /api/v1/centers: add, change, remove, audit, bad input,
and which center a client address is at (X-Forwarded-For believed from the trusted proxy only)."""

import pytest

from broker.db.models import AuditEvent, Center
from tests.fixtures.broker import BrokerClient
from tests.fixtures.centers import (
    AWAY_ADDRESS,
    CENTER,
    CENTER_ADDRESS,
    INTERNET_ADDRESS,
    add_center,
    at,
    stored,
)


def test_add_list_change_and_remove_a_center_audited(center_admin, centers_config):
    created = add_center(center_admin)
    assert created["name_ko"] == "서울역 스마트워크센터" and created["seats"] == {
        "business": 2,
        "internet": 1,
    }
    listed = center_admin.get("/api/v1/admin/centers").json()["centers"]
    assert [c["name"] for c in listed] == ["seoul-station"]
    changed = center_admin.request(
        "PATCH", "/api/v1/admin/centers/seoul-station", json={"seats": {"business": 20, "internet": 4}}
    )
    assert changed.status == 200 and changed.json()["seats"] == {"business": 20, "internet": 4}
    assert center_admin.request("DELETE", "/api/v1/admin/centers/seoul-station").status == 204
    assert center_admin.get("/api/v1/admin/centers/seoul-station").status == 404
    events = stored(centers_config, AuditEvent, AuditEvent.action.like("center.%"))
    assert [(e.action, e.actor, e.target) for e in events] == [
        ("center.add", "kimmj", "seoul-station"),
        ("center.change", "kimmj", "seoul-station"),
        ("center.remove", "kimmj", "seoul-station"),
    ]
    assert events[1].detail == {"seats": {"business": 20, "internet": 4}}


def test_a_new_center_answers_with_its_defaults(center_admin):
    response = center_admin.post(
        "/api/v1/admin/centers", json={"name": "sejong", "name_ko": "세종 센터", "name_en": "Sejong"}
    )
    assert response.status == 201, response.text
    created = response.json()
    assert (created["time_zone"], created["booking_policy"], created["seats"]) == (
        "Asia/Seoul",
        "walk_in",
        {"business": 0, "internet": 0},
    )
    assert center_admin.get("/api/v1/admin/centers/sejong").json() == created


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"opening_hours": {"mon": "18:00-09:00"}}, "opening_hours"),
        ({"opening_hours": {"someday": "09:00-18:00"}}, "opening_hours"),
        ({"networks": [{"cidr": "10.20.0.0/33"}]}, "networks.0.cidr"),
        ({"networks": [{"cidr": "10.30.0.0/24", "zone": "guest"}]}, "networks.0.zone"),
        ({"seats": {"business": -1}}, "seats"),
        ({"booking_policy": "first_come"}, "booking_policy"),
        ({"name": "Seoul Station"}, "name"),
    ],
)
def test_bad_input_names_the_field_and_stores_nothing(center_admin, centers_config, change, field):
    response = center_admin.post("/api/v1/admin/centers", json={**CENTER, **change})
    assert response.status == 400, response.text
    assert response.json()["error"]["field"] == field
    assert stored(centers_config, Center) == []


def test_a_network_belongs_to_one_center(center_admin, centers_config):
    add_center(center_admin)
    other = {**CENTER, "name": "sejong", "networks": [{"cidr": "10.20.0.128/25"}]}
    response = center_admin.post("/api/v1/admin/centers", json=other)
    assert response.status == 400 and response.json()["error"]["field"] == "networks"
    assert "overlaps 10.20.0.0/24 of center seoul-station" in response.json()["error"]["message"]
    assert center_admin.post("/api/v1/admin/centers", json=CENTER).status == 409


def test_only_administrators_manage_centers(centers_url):
    client = BrokerClient(centers_url)
    assert client.login("choijw").status == 200  # group moef: not an administrator
    assert client.post("/api/v1/admin/centers", json=CENTER).status == 403
    assert BrokerClient(centers_url).get("/api/v1/admin/centers").status == 401


def test_the_client_address_says_which_center_and_zone(center_admin, centers_url):
    add_center(center_admin)
    assert center_admin.get("/api/v1/centers/here", headers=at(CENTER_ADDRESS)).json() == {
        "center": "seoul-station",
        "name_ko": "서울역 스마트워크센터",
        "name_en": "Seoul Station Smart Work Center",
        "zone": "business",
    }
    assert center_admin.get("/api/v1/centers/here", headers=at(INTERNET_ADDRESS)).json()["zone"] == "internet"
    assert center_admin.get("/api/v1/centers/here", headers=at(AWAY_ADDRESS)).json()["center"] is None
    listed = center_admin.get("/api/v1/centers").json()["centers"]
    assert listed[0]["name_en"] == CENTER["name_en"] and "networks" not in listed[0]


def test_the_desktops_page_shows_the_center(center_admin):
    add_center(center_admin)
    page = center_admin.get("/desktops?lang=ko", headers=at(CENTER_ADDRESS)).text
    assert "현재 위치: 서울역 스마트워크센터 (업무망)" in page
    page = center_admin.get("/desktops?lang=en", headers=at(AWAY_ADDRESS)).text
    assert "outside the smart work centers" in page
