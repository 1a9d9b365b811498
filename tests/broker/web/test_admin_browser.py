"""The admin console in headless Chromium: axe-core finds nothing on any page in either language, and an
administrator drains a host, forces a logoff, revokes a user and searches the audit log with the keyboard;
a user outside the admin groups is refused."""

import datetime as dt

import pytest
from sqlalchemy import update

from broker.db import Database
from broker.db.models import Desktop, Image, ImageVersion, Rollout
from broker.desktops import canary_owner, domain_prefix
from tests.fixtures.admin_console import ADMIN, NON_ADMIN, axe_violations
from tests.fixtures.broker import PASSWORD, seed_session

pytestmark = pytest.mark.e2e

PAGES = [
    "/admin",
    "/admin/hosts",
    "/admin/hosts?pool=mois-office",
    "/admin/pools",
    "/admin/sessions",
    "/admin/sessions?user=guest01",
    "/admin/images",
    "/admin/audit",
    # The smart work center pages the console's menu links (broker/web/handlers/admin_centers.py).
    "/admin/centers",
    "/admin/centers/attendance",
]


SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.fixture
def seeded(admin_config):
    """A running desktop session of guest01 in mois-office (its id is returned) and an image in the catalog."""
    db = Database(admin_config.database)
    try:
        session_id, _ = seed_session(db, "guest01", "mois-office")
        with db.transaction() as session:
            session.add(Image(name="office-2026", os="debian-12"))
            session.flush()
            session.add(
                ImageVersion(
                    image_name="office-2026",
                    version="2026.12.1",
                    path="/var/lib/vdi/images/office-2026/2026.12.1.qcow2",
                    sha256=SHA256,
                    size_bytes=1_234_567_890,
                    virtual_size_bytes=8 << 30,
                    built_by="kimmj",
                )
            )
            # A finished rollout (one in progress would be driven on by the broker meanwhile).
            now = dt.datetime.now(dt.UTC)
            session.add(
                Rollout(
                    pool_name="mois-office",
                    image_name="office-2026",
                    version="2026.12.1",
                    from_image="office-2026:2026.11.1",
                    state="rolled_back",
                    canary="1",
                    canary_count=1,
                    canaries=["vdi-mois-office-canary-r1-abcdef"],
                    deadline_s=300,
                    requested_by=ADMIN,
                    created_at=now,
                    deadline_at=now,
                    finished_at=now,
                    reason="canary desktop vdi-mois-office-canary-r1-abcdef crashed",
                )
            )
    finally:
        db.close()
    return session_id


def sign_in(page, base_url, username):
    page.goto(f"{base_url}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/desktops")


@pytest.fixture
def admin_page(page, admin_url):
    sign_in(page, admin_url, ADMIN)
    return page


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_no_page_has_accessibility_violations(admin_page, admin_url, seeded, lang):
    found = {}
    for path in PAGES:
        separator = "&" if "?" in path else "?"
        admin_page.goto(f"{admin_url}{path}{separator}lang={lang}")
        assert admin_page.locator("html").get_attribute("lang") == lang
        found[path] = axe_violations(admin_page)
    assert found == {path: [] for path in PAGES}


def test_the_korean_pool_page_labels_kinds_and_rollout_states_in_korean(admin_page, admin_url, seeded):
    admin_page.goto(f"{admin_url}/admin/pools?lang=ko")

    kinds = admin_page.locator("td.kind").all_inner_texts()
    state = admin_page.locator("article[data-pool=mois-office] .rollout-state").inner_text()
    progress = admin_page.locator("article[data-pool=mois-office] .rollout-progress").inner_text()
    bar = admin_page.get_by_role("progressbar", name="mois-office 풀 롤아웃 진행률")

    assert kinds == ["유동", "유동"]
    assert state.startswith("최근 롤아웃 1: 2026.12.1 버전, 상태: 롤백됨") and "rolled_back" not in state
    assert progress == "새 버전 데스크톱 0/1대, 카나리 1/1대 시작"
    assert bar.get_attribute("value") == "0" and bar.get_attribute("max") == "1"
    admin_page.goto(f"{admin_url}/admin/pools?lang=en")
    assert admin_page.locator("td.kind").all_inner_texts() == ["Floating", "Floating"]
    assert "Rolled back" in admin_page.locator("article[data-pool=mois-office] .rollout-state").inner_text()


@pytest.fixture
def canary_on_trial(admin_config) -> tuple[int, str]:
    """A rollout of moef-office in "canary" whose one canary is still starting: the broker's rollout
    manager keeps checking it (its deadline is far) until the test makes the canary fail."""
    db = Database(admin_config.database)
    now = dt.datetime.now(dt.UTC)
    try:
        with db.transaction() as session:
            rollout = Rollout(
                pool_name="moef-office",
                image_name="office-2026",
                version="2026.12.2",
                from_image="office-2026:2026.12.1",
                state="canary",
                canary="1",
                canary_count=1,
                canaries=[],
                deadline_s=900,
                requested_by=ADMIN,
                created_at=now,
                deadline_at=now + dt.timedelta(seconds=900),
            )
            session.add(rollout)
            session.flush()
            canary = f"{domain_prefix('moef-office', canary_owner(rollout.id))}abcdef"
            rollout.canaries = [canary]
            session.add(
                Desktop(
                    pool_name="moef-office",
                    host_name="local",
                    domain_name=canary,
                    image="office-2026:2026.12.2",
                    state="provisioning",
                )
            )
            return rollout.id, canary
    finally:
        db.close()


def test_the_pools_page_follows_an_unfinished_rollout_in_place(
    admin_page, admin_url, admin_config, canary_on_trial
):
    rollout_id, canary = canary_on_trial
    admin_page.goto(f"{admin_url}/admin/pools?lang=ko")
    admin_page.evaluate("window.notReloaded = true")
    article = admin_page.locator("article[data-pool=moef-office]")
    assert "상태: 카나리 확인 중" in article.locator(".rollout-state").inner_text()
    assert article.locator(".rollout-progress").inner_text() == "새 버전 데스크톱 1/1대, 카나리 1/1대 시작"

    db = Database(admin_config.database)
    try:
        with db.transaction() as session:
            session.execute(update(Desktop).where(Desktop.domain_name == canary).values(state="error"))
    finally:
        db.close()

    article.locator(".rollout-state[data-state=rolled_back]").wait_for(timeout=30_000)
    assert (
        article.locator(".rollout-state")
        .inner_text()
        .startswith(
            f"최근 롤아웃 {rollout_id}: 2026.12.2 버전, 상태: 롤백됨 (canary desktop {canary} is error"
        )
    )
    assert article.locator(".rollout-progress").inner_text() == "새 버전 데스크톱 0/0대, 카나리 1/1대 시작"
    assert admin_page.locator("#admin-status").inner_text() == f"moef-office 풀의 롤아웃 {rollout_id}: 롤백됨"
    assert admin_page.evaluate("window.notReloaded") is True


def test_start_a_rollout_from_the_console_and_see_it_end(admin_page, admin_url, admin_config):
    db = Database(admin_config.database)
    try:
        with db.transaction() as session:
            session.add(Image(name="demo", os="debian-12"))
            session.flush()
            # Its file is missing, so the broker rolls the rollout back before placing anything.
            session.add(
                ImageVersion(
                    image_name="demo",
                    version="2026.12.3",
                    path="/nonexistent/demo.qcow2",
                    sha256=SHA256,
                    size_bytes=1 << 20,
                    virtual_size_bytes=8 << 30,
                )
            )
    finally:
        db.close()
    admin_page.goto(f"{admin_url}/admin/pools?lang=en")
    form = admin_page.locator("article[data-pool=mois-office] form")
    form.get_by_label("New version").fill("2026.12.3")
    submit_by_keyboard(admin_page, form.get_by_role("button", name="Start rollout"))

    admin_page.locator("#admin-status", has_text="The rollout of pool mois-office has started.").wait_for()
    state = admin_page.locator("article[data-pool=mois-office] .rollout-state[data-state=rolled_back]")
    state.wait_for(timeout=30_000)
    assert state.inner_text().startswith("Latest rollout 1: to 2026.12.3, Rolled back (a canary desktop of")
    admin_page.goto(f"{admin_url}/admin/audit?action=rollout.start&lang=en")
    assert admin_page.locator("#audit-events td.result").all_inner_texts() == ["Success"]


def test_host_session_and_audit_codes_are_labelled_in_korean(admin_page, admin_url, seeded):
    admin_page.goto(f"{admin_url}/admin/hosts?lang=ko")
    assert admin_page.locator("td.health").all_inner_texts() == ["정상"]
    assert admin_page.locator("td.admin-state").all_inner_texts() == ["사용"]
    admin_page.goto(f"{admin_url}/admin/sessions?user=guest01&lang=ko")
    assert admin_page.locator("td.session-state").all_inner_texts() == ["사용 중"]
    admin_page.goto(f"{admin_url}/admin/audit?action=login&lang=ko")
    assert set(admin_page.locator("td.result").all_inner_texts()) == {"성공"}


def test_images_show_versions_with_their_checksums(admin_page, admin_url, seeded):
    admin_page.goto(f"{admin_url}/admin/images?lang=en")
    table = admin_page.get_by_role("table", name="office-2026 (debian-12)")
    assert table.locator(".checksum").inner_text() == SHA256
    assert "1,234,567,890" in table.inner_text()


def submit_by_keyboard(page, button):
    button.focus()
    page.keyboard.press("Enter")


def test_drain_a_host_enable_it_disable_it(admin_page, admin_url):
    admin_page.goto(f"{admin_url}/admin/hosts?lang=en")
    submit_by_keyboard(admin_page, admin_page.get_by_role("button", name="Drain host local"))
    admin_page.locator("#admin-status", has_text="Host local is draining").wait_for()
    row = admin_page.locator("tr[data-host=local] .admin-state")
    assert row.get_attribute("data-admin-state") == "draining"
    assert admin_page.locator("tr[data-host=local] button[data-action=drain]").count() == 0
    assert axe_violations(admin_page) == []
    admin_page.get_by_role("button", name="Enable host local").click()
    admin_page.locator("#admin-status", has_text="Host local is enabled").wait_for()
    submit_by_keyboard(admin_page, admin_page.get_by_role("button", name="Disable host local"))
    admin_page.locator("#admin-status", has_text="Host local is disabled").wait_for()
    assert admin_page.locator("tr[data-host=local] .admin-state").inner_text() == "Disabled"
    admin_page.get_by_role("button", name="Enable host local").click()
    admin_page.locator("#admin-status", has_text="Host local is enabled").wait_for()
    admin_page.goto(f"{admin_url}/admin/audit?action=host.change&lang=en")
    details = admin_page.locator("#audit-events td.detail").all_inner_texts()
    assert details == [
        f'{{"admin_state": "{state}"}}' for state in ("enabled", "disabled", "enabled", "draining")
    ]


def test_placement_explanation_for_a_pool(admin_page, admin_url):
    admin_page.goto(f"{admin_url}/admin/hosts?lang=en")
    admin_page.get_by_label("Pool").select_option("mois-office")
    admin_page.get_by_role("button", name="Explain").click()
    admin_page.wait_for_url("**/admin/hosts?pool=mois-office")
    assert admin_page.locator("#explain-host").inner_text() == "local"


def test_force_logoff_and_revoke_a_user_everywhere(admin_page, admin_url, seeded):
    admin_page.goto(f"{admin_url}/admin/sessions?user=guest01&lang=en")
    button = admin_page.get_by_role("button", name="Force logoff of guest01's session in mois-office")
    submit_by_keyboard(admin_page, button)
    admin_page.locator("#admin-status", has_text="guest01's session was logged off").wait_for()
    assert admin_page.locator(f"tr[data-session='{seeded}'] .session-state").inner_text() == "Ended"
    admin_page.get_by_role("button", name="Sign guest01 out everywhere").click()
    admin_page.locator("#admin-status", has_text="guest01 was signed out everywhere").wait_for()
    admin_page.goto(f"{admin_url}/admin/audit?user=guest01&lang=en")
    actions = admin_page.locator("#audit-events td.code:not(.detail)").all_inner_texts()
    assert actions[:2] == ["revoke_sessions", "force_logoff"]


def test_a_refused_action_shows_the_brokers_reason(admin_page, admin_url):
    admin_page.goto(f"{admin_url}/admin/pools?lang=en")
    form = admin_page.locator("article[data-pool=mois-office] form")
    form.get_by_label("New version").fill("no-such-version")
    form.get_by_role("button", name="Start rollout").click()
    alert = admin_page.locator("#admin-alert")
    alert.wait_for()
    assert alert.inner_text() != ""


def test_audit_search_by_action(admin_page, admin_url):
    admin_page.goto(f"{admin_url}/admin/audit?lang=ko")
    admin_page.get_by_label("작업").fill("login")
    admin_page.get_by_label("사용자").fill(ADMIN)
    admin_page.keyboard.press("Enter")
    admin_page.wait_for_url("**/admin/audit?*action=login*")
    rows = admin_page.locator("#audit-events tbody tr")
    assert rows.count() >= 1
    assert set(
        admin_page.locator("#audit-events tbody tr").evaluate_all("rs => rs.map(r => r.dataset.action)")
    ) == {"login"}
    href = admin_page.get_by_role("link", name="CSV로 내보내기").get_attribute("href")
    assert href == f"/api/v1/admin/audit/export?user={ADMIN}&action=login&limit=200"


def test_a_user_outside_the_admin_groups_is_refused(page, admin_url):
    sign_in(page, admin_url, NON_ADMIN)
    response = page.goto(f"{admin_url}/admin/hosts?lang=en")
    assert response.status == 403
    assert page.get_by_role("alert").inner_text().startswith("This needs a member of an administrator group")
    assert page.get_by_role("link", name="Admin console").count() == 0


def test_add_a_host_and_a_refusal_names_the_field(admin_page, admin_url):
    admin_page.goto(f"{admin_url}/admin/hosts?lang=en")
    form = admin_page.locator("form[data-path='/api/v1/hosts']")
    form.get_by_label("Name", exact=True).fill("kvm-test")
    form.get_by_label("URI").fill("nonsense://nowhere")
    form.get_by_role("button", name="Add").click()
    alert = admin_page.locator("#admin-alert")
    alert.wait_for()
    assert "uri" in alert.inner_text()
    assert admin_page.evaluate("document.activeElement.name") == "uri"
    # libvirt's test driver: a real connection that needs no hypervisor.
    form.get_by_label("URI").fill("test:///default")
    form.get_by_role("button", name="Add").click()
    admin_page.locator("#admin-status", has_text="The host was added.").wait_for()
    assert admin_page.locator("tr[data-host=kvm-test] .admin-state").inner_text() == "Enabled"
