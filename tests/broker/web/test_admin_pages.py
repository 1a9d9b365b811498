"""The admin console's pages over HTTP: who may see them, what they show, the audit CSV export."""

import pytest

from broker.db import Database
from tests.fixtures.admin_console import ADMIN, NON_ADMIN
from tests.fixtures.broker import BrokerClient, seed_session

PAGES = ["/admin", "/admin/hosts", "/admin/pools", "/admin/sessions", "/admin/images", "/admin/audit"]


@pytest.mark.parametrize("path", PAGES)
def test_an_administrator_gets_every_page_in_both_languages(admin_client, path):
    korean = admin_client.get(path + "?lang=ko")
    english = admin_client.get(path + "?lang=en")
    assert (korean.status, english.status) == (200, 200)
    assert '<nav class="admin-nav" aria-label="관리 메뉴">' in korean.text
    assert '<nav class="admin-nav" aria-label="Admin menu">' in english.text
    assert 'aria-current="page"' in english.text


@pytest.mark.parametrize("path", PAGES)
def test_a_user_outside_the_admin_groups_is_refused(admin_url, path):
    client = BrokerClient(admin_url)
    assert client.login(NON_ADMIN).status == 200
    refused = client.get(path + "?lang=en")
    assert refused.status == 403
    assert "broker.admin_groups" in refused.text
    assert 'data-reason="forbidden"' in refused.text


@pytest.mark.parametrize("path", PAGES)
def test_signed_out_visitors_are_sent_to_sign_in(admin_url, path):
    response = BrokerClient(admin_url).get(path)
    assert response.status == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_the_portal_menu_links_the_console_for_administrators_only(admin_url, admin_client):
    assert 'href="/admin"' in admin_client.get("/desktops").text
    other = BrokerClient(admin_url)
    other.login(NON_ADMIN)
    assert 'href="/admin"' not in other.get("/desktops").text


def test_the_console_menu_links_the_smart_work_center_pages(admin_client):
    korean = admin_client.get("/admin?lang=ko").text
    english = admin_client.get("/admin?lang=en").text
    assert '<a href="/admin/centers">스마트워크센터</a>' in korean
    assert '<a href="/admin/centers/attendance">근태 기록</a>' in korean
    assert '<a href="/admin/centers">Smart work centers</a>' in english
    assert '<a href="/admin/centers/attendance">Attendance</a>' in english
    for path in ("/admin/centers", "/admin/centers/attendance"):
        assert admin_client.get(path + "?lang=en").status == 200


def test_dashboard_counts_sessions_hosts_and_logons(admin_client, admin_config):
    db = Database(admin_config.database)
    try:
        seed_session(db, "guest01", "mois-office")
    finally:
        db.close()
    overview = admin_client.get("/api/v1/admin/overview").json()
    assert overview["sessions_active"] == 1
    assert overview["hosts"] == {"total": 1, "up": 1, "down": 0, "draining": 0, "disabled": 0}
    assert overview["logons_last_minute"] >= 1  # the administrator's own sign-in
    pools = {pool["name"]: pool for pool in overview["pools"]}
    assert pools["mois-office"]["desktops"]["in_use"] == 1
    assert pools["mois-office"]["headroom"] == 3
    page = admin_client.get("/admin?lang=en").text
    assert '<dd id="sessions-active">1</dd>' in page


def test_session_search_by_user_prefix_and_state(admin_client, admin_config):
    db = Database(admin_config.database)
    try:
        seed_session(db, "guest01", "mois-office")
        seed_session(db, "choijw", "moef-office")
    finally:
        db.close()
    found = admin_client.get("/api/v1/admin/sessions?user=gue").json()["sessions"]
    assert [s["username"] for s in found] == ["guest01"]
    assert admin_client.get("/api/v1/admin/sessions?state=ended").json()["sessions"] == []
    page = admin_client.get("/admin/sessions?user=choijw&lang=en").text
    assert "Sign choijw out everywhere" in page and "guest01" not in page
    bad = admin_client.get("/api/v1/admin/sessions?state=paused")
    assert bad.status == 400 and bad.json()["error"]["field"] == "state"


def test_audit_search_filters_by_user_action_and_time(admin_client):
    events = admin_client.get(f"/api/v1/admin/audit?user={ADMIN}&action=login").json()["events"]
    assert events and all(e["actor"] == ADMIN and e["action"] == "login" for e in events)
    assert admin_client.get("/api/v1/admin/audit?since=2999-01-01T00:00:00").json()["events"] == []
    assert admin_client.get("/api/v1/admin/audit?until=2000-01-01T00:00:00Z").json()["events"] == []
    bad = admin_client.get("/api/v1/admin/audit?since=yesterday")
    assert bad.status == 400 and bad.json()["error"]["field"] == "since"


def test_audit_csv_export_has_a_bom_korean_text_and_is_itself_audited(admin_client):
    admin_client.post(f"/api/v1/admin/users/{NON_ADMIN}/revoke-sessions")  # unknown user: a 404, not audited
    exported = admin_client.get(f"/api/v1/admin/audit/export?user={ADMIN}")
    assert exported.status == 200
    assert exported.headers["Content-Type"].startswith("text/csv")
    assert exported.body.startswith(b"\xef\xbb\xbf")
    lines = exported.body.decode("utf-8-sig").splitlines()
    assert lines[0] == "id,at,actor,action,result,target,source_ip,detail"
    assert any(",login,success," in line for line in lines[1:])
    audit = admin_client.get("/api/v1/admin/audit?action=audit_export").json()["events"]
    assert audit[0]["actor"] == ADMIN and audit[0]["detail"]["user"] == ADMIN


def test_the_admin_api_refuses_non_administrators(admin_url):
    client = BrokerClient(admin_url)
    client.login(NON_ADMIN)
    for path in (
        "/api/v1/admin/overview",
        "/api/v1/admin/sessions",
        "/api/v1/admin/audit",
        "/api/v1/admin/pools",
    ):
        refused = client.get(path)
        assert (refused.status, refused.json()["error"]["reason"]) == (403, "forbidden"), path


def test_the_consoles_actions_without_the_xsrf_token_are_refused_and_change_nothing(
    admin_client, admin_config
):
    db = Database(admin_config.database)
    try:
        session_id, _ = seed_session(db, "guest01", "mois-office")
    finally:
        db.close()
    actions = [
        ("PATCH", "/api/v1/hosts/local", {"admin_state": "draining"}),
        ("POST", "/api/v1/hosts", {"name": "kvm-02", "uri": "qemu:///system"}),
        ("POST", f"/api/v1/admin/sessions/{session_id}/logoff", {}),
        ("POST", "/api/v1/admin/users/guest01/revoke-sessions", {}),
        ("POST", "/api/v1/admin/pools/mois-office/rollouts", {"version": "2"}),
    ]
    for method, path, body in actions:
        # A page of another site can send the session cookie, but not the _xsrf cookie's value as a header.
        refused = admin_client.request(method, path, json=body, xsrf=False)
        assert refused.status == 403, (path, refused.body)

    hosts = admin_client.get("/api/v1/hosts").json()["hosts"]
    assert [(h["name"], h["admin_state"]) for h in hosts] == [("local", "enabled")]
    sessions = admin_client.get("/api/v1/admin/sessions?user=guest01").json()["sessions"]
    assert [s["state"] for s in sessions] == ["active"]
    assert admin_client.get("/api/v1/admin/pools/mois-office/rollout").json()["rollout"] is None
    events = admin_client.get("/api/v1/admin/audit").json()["events"]
    assert {e["action"] for e in events} == {"login"}
