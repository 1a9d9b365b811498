"""The centers' pages in Chromium: booking and cancelling a seat with the keyboard, a refused booking shown
with the field marked, the administrators' center list, occupancy and attendance (CSV), the kiosk page,
and transfer requests between zones, all with zero axe-core violations in Korean and English."""

import datetime as dt

import pytest

from broker.db.models import utcnow
from broker.reservations import slot_floor
from tests.fixtures.accessibility import axe_violations
from tests.fixtures.broker import PASSWORD
from tests.fixtures.broker_api import signed_in
from tests.fixtures.centers import (
    AWAY_ADDRESS,
    CENTER_ADDRESS,
    SEOUL,
    TerminalClient,
    add_center,
    at,
    book_until,
    booking,
    connect_at,
    desktop_session,
    login_at,
    logoff_at,
    tomorrow_at,
)
from tests.fixtures.common import wait_until


def sign_in(page, url, username, address=AWAY_ADDRESS):
    page.set_extra_http_headers(at(address))
    page.goto(f"{url}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/desktops")


def test_book_and_cancel_a_seat_with_the_keyboard(axe_page, center_admin, centers_url):
    page = axe_page
    add_center(center_admin)
    sign_in(page, centers_url, "choijw", CENTER_ADDRESS)  # a walk-in seat comes with this login
    assert "서울역 스마트워크센터 (업무망)" in page.inner_text("#center-here")
    assert axe_violations(page) == []
    page.goto(f"{centers_url}/reservations")
    assert axe_violations(page) == []
    page.fill("#day", tomorrow_at(9).date().isoformat())
    page.select_option("#starts", "09:00")
    page.select_option("#ends", "11:00")
    page.focus("#booking-form button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/reservations?booked=*")
    assert page.inner_text("#reservation-status") == "좌석을 예약했습니다."
    rows = page.locator("#my-reservations tbody tr")
    assert rows.count() == 2  # the walk-in seat of now, and tomorrow's booking
    assert "09:00 – 11:00" in rows.nth(1).inner_text()
    assert axe_violations(page) == []
    rows.nth(1).get_by_role("button", name="B01 좌석 예약 취소").press("Enter")
    page.wait_for_url("**/reservations?cancelled=*")
    assert page.locator("#my-reservations tbody tr").count() == 1


def test_a_refused_booking_is_announced_with_its_field_marked(axe_page, center_admin, centers_url):
    page = axe_page
    add_center(center_admin, seats={"business": 1, "internet": 0})
    response = center_admin.post("/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(12)))
    assert response.status == 201
    sign_in(page, centers_url, "choijw")
    page.goto(f"{centers_url}/reservations?lang=en")
    assert "outside the smart work centers" in page.inner_text("#center-here")
    page.fill("#day", tomorrow_at(9).date().isoformat())
    page.select_option("#starts", "10:00")
    page.select_option("#ends", "11:00")
    page.click("#booking-form button[type=submit]")
    alert = page.locator("#reservation-error[role=alert]")
    assert (
        alert.inner_text()
        == f"No seat is free for this time. The next free time: {tomorrow_at(12):%Y-%m-%d} 12:00"
    )
    assert page.get_attribute("#starts", "aria-invalid") == "true"
    assert page.get_attribute("#starts", "aria-describedby") == "reservation-error"
    assert axe_violations(page) == []


def test_administrators_see_centers_and_occupancy(axe_page, center_admin, centers_url):
    page = axe_page
    add_center(center_admin)
    signed_in(centers_url, "choijw").post(
        "/api/v1/reservations", json=booking(tomorrow_at(9), tomorrow_at(12))
    )
    sign_in(page, centers_url, "kimmj")
    for lang, title in (("ko", "스마트워크센터 관리"), ("en", "Smart work centers")):
        page.goto(f"{centers_url}/admin/centers?lang={lang}")
        assert page.inner_text("h1") == title
        assert axe_violations(page) == []
    page.get_by_role("link", name="Seoul Station Smart Work Center").click()
    page.fill("#day", tomorrow_at(9).date().isoformat())
    page.keyboard.press("Enter")
    page.wait_for_url("**/admin/centers/seoul-station?day=*")
    assert "1 of 2 seats booked" in page.inner_text("#zone-business")
    assert "choijw" in page.inner_text("#occupancy-business")
    assert axe_violations(page) == []


def test_the_admin_pages_are_for_administrators_only(center_admin, centers_url):
    add_center(center_admin)
    other = signed_in(centers_url, "choijw")
    assert other.get("/admin/centers").status == 403
    assert center_admin.get("/admin/centers/busan").status == 404


def test_attendance_page_shows_the_day_exports_csv_and_takes_corrections(axe_page, toy_centers_url):
    page = axe_page
    admin = signed_in(toy_centers_url, "kimmj")
    add_center(admin)
    terminal, response = login_at(toy_centers_url, "choijw", CENTER_ADDRESS)
    assert response.status == 200
    session = connect_at(terminal, "moef-office", CENTER_ADDRESS)  # check-in
    logoff_at(terminal, session["session_id"], CENTER_ADDRESS)  # check-out
    sign_in(page, toy_centers_url, "kimmj")
    page.goto(f"{toy_centers_url}/admin/centers")
    page.click("#attendance-link")
    row = page.locator("#attendance tr[data-user=choijw]")
    assert "최지우 (choijw)" in row.inner_text() and "서울역 스마트워크센터" in row.inner_text()
    assert axe_violations(page) == []
    with page.expect_download() as download:
        page.click("#attendance-csv")
    text = download.value.path().read_text(encoding="utf-8")
    assert (
        text.startswith("\ufeff날짜,사용자 ID,이름,센터")
        and "choijw,최지우,서울역 스마트워크센터,B01" in text
    )
    # A correction without a reason (blanks only) is refused with the field marked; with one it is recorded.
    page.fill("#username", "choijw")
    page.fill("#reason", "  ")
    page.select_option("#checked_in", "09:00")
    page.select_option("#checked_out", "18:00")
    page.click("#correction-form button[type=submit]")
    assert page.get_attribute("#reason", "aria-invalid") == "true"
    assert "reason" in page.inner_text("#attendance-error")
    assert axe_violations(page) == []
    page.fill("#reason", "단말 장애로 로그오프 누락")
    page.focus("#correction-form button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_url("**/admin/centers/attendance?*corrected=1")
    assert page.inner_text("#attendance-status") == "근태 기록을 정정했습니다."
    row = page.locator("#attendance tr[data-user=choijw]")
    assert "09:00" in row.inner_text() and "단말 장애로 로그오프 누락" in row.inner_text()


def test_the_kiosk_page_signs_out_after_inactivity(axe_page, center_admin, centers_url):
    page = axe_page
    # Long enough for the checks below on a busy machine (axe takes seconds), short enough to wait for.
    add_center(center_admin, kiosk_idle_s=20)
    sign_in(page, centers_url, "choijw", CENTER_ADDRESS)  # a walk-in seat at a center terminal
    page.goto(f"{centers_url}/kiosk")
    assert page.inner_text("h1") == "스마트워크센터 단말기"
    assert "좌석 B01" in page.inner_text("#kiosk-seat")
    page.keyboard.press("Tab")  # the keyboard reaches the full-screen button (after My desktops)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "kiosk-fullscreen"
    page.keyboard.press("Enter")  # a user's gesture, as browsers require for full screen
    page.wait_for_function("document.fullscreenElement === document.documentElement")
    assert axe_violations(page) == []
    # Nobody touches the terminal: the page signs out and the next user sees the sign-in page, which
    # leads back to the kiosk.
    page.wait_for_url(f"{centers_url}/login?next=%2Fkiosk", timeout=90_000)
    assert page.request.get(f"{centers_url}/api/v1/me").status == 401
    assert axe_violations(page) == []
    page.goto(f"{centers_url}/desktops")
    page.wait_for_url(f"{centers_url}/login?next=%2Fdesktops")


@pytest.mark.parametrize("page_shown", ["kiosk", "console"])
def test_the_kiosk_signs_out_and_cuts_the_console_when_the_seat_ends(
    axe_page, toy_centers_url, toy_centers_config, page_shown
):
    page, url = axe_page, toy_centers_url
    admin = signed_in(url, "kimmj")
    add_center(admin, unregistered_terminals="refuse")  # only registered terminals; input never idles out
    terminal = {"name": "b01", "address": CENTER_ADDRESS}
    assert admin.post("/api/v1/admin/centers/seoul-station/terminals", json=terminal).status == 201
    ends_at = utcnow() + dt.timedelta(seconds=40)  # time for the checks before it, on a busy machine
    book_until(toy_centers_config, "choijw", ends_at)
    # The terminal's browser starts on the kiosk page; signing in leads back to it.
    page.set_extra_http_headers(at(CENTER_ADDRESS))
    page.goto(f"{url}/kiosk")
    page.wait_for_url(f"{url}/login?next=%2Fkiosk")
    page.fill("#username", "choijw")
    page.fill("#password", PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{url}/kiosk")
    until = ends_at.astimezone(SEOUL).strftime("%H:%M")
    assert page.inner_text("#kiosk-seat").startswith(f"좌석 B01, {until}까지")
    assert axe_violations(page) == []
    if page_shown == "console":
        page.get_by_role("link", name="내 데스크톱").click()
        page.locator("button.connect[data-pool=moef-office]").click()
        page.wait_for_url(f"{url}/console/*")
        session_id = page.url.rsplit("/", 1)[1]
    else:  # a console opened on another screen of the same user
        session_id = page.evaluate(CONNECT_SCRIPT, "moef-office")
    assert desktop_session(toy_centers_config, session_id) == ("active", None)
    # The seat's end: whatever the page, the terminal is back on the sign-in page for the next user ...
    page.wait_for_url(f"{url}/login?next=%2Fkiosk", timeout=60_000)
    assert page.locator("#username").is_visible()
    # ... the portal session is over ...
    assert page.request.get(f"{url}/api/v1/me").status == 401
    # ... and the console is cut (the gateways close the tunnels of a cut session).
    _state, cut = wait_until(
        lambda: (found := desktop_session(toy_centers_config, session_id))[0] == "ended" and found,
        30,
        "the desktop session at the center to end",
    )
    assert cut in ("logout", "seat_ended")


# fetch() from the signed-in page, as desktops.js does: the session id of a new console.
CONNECT_SCRIPT = """async (pool) => {
  const xsrf = decodeURIComponent(document.cookie.match(/(?:^|;\\s*)_xsrf=([^;]*)/)[1]);
  const response = await fetch(`/api/v1/pools/${pool}/connect`, {
    method: "POST", credentials: "same-origin", body: "{}",
    headers: {"Content-Type": "application/json", "X-XSRFToken": xsrf},
  });
  return (await response.json()).session_id;
}"""


def test_a_transfer_request_is_asked_approved_and_fetched_in_the_browser(axe_page, browser, transfers_url):
    page = axe_page
    sign_in(page, transfers_url, "kimmj")
    page.goto(f"{transfers_url}/transfers")
    assert axe_violations(page) == []
    page.fill("#reason", "보고서 외부 송부")
    page.set_input_files(
        "#file", files=[{"name": "보고서.txt", "mimeType": "text/plain", "buffer": "요약".encode()}]
    )
    page.click("#transfer-form button[type=submit]")
    page.wait_for_url("**/transfers?requested=*")
    assert "승인 대기" in page.inner_text("#transfers")
    assert axe_violations(page) == []
    approver_context = browser.new_context(locale="en-US", bypass_csp=True)
    approver = approver_context.new_page()
    try:
        sign_in(approver, transfers_url, "parksec")
        approver.goto(f"{transfers_url}/transfers/approvals")
        assert "kimmj: 보고서.txt" in approver.inner_text("main")
        assert axe_violations(approver) == []
        approver.fill("input[name=note]", "OK")
        approver.get_by_role("button", name="Approve").click()
        approver.wait_for_url("**/transfers/approvals?decided=*")
        assert approver.inner_text("#no-approvals")
    finally:
        approver_context.close()
    page.reload()
    with page.expect_download() as download:
        page.get_by_role("link", name="보고서.txt 받기").click()
    assert download.value.path().read_text(encoding="utf-8") == "요약"


def terminal_page(browser, url, pki, device):
    user = pki.users[device]
    context = browser.new_context(
        locale="ko-KR",
        bypass_csp=True,
        ignore_https_errors=True,
        client_certificates=[{"origin": url, "certPath": str(user.cert_path), "keyPath": str(user.key_path)}],
    )
    return context, context.new_page()


def test_a_terminal_signs_in_with_its_device_certificate_and_an_unregistered_one_is_refused(
    browser, tls_centers_url, lab_pki
):
    url, pki = tls_centers_url, lab_pki.pki
    admin = TerminalClient(url, pki)
    assert admin.login("kimmj").status == 200
    add_center(admin, unregistered_terminals="refuse")
    pem = pki.users["choijw"].cert_path.read_text()
    assert (
        admin.post(
            "/api/v1/admin/centers/seoul-station/terminals", json={"name": "b01", "certificate": pem}
        ).status
        == 201
    )
    context, page = terminal_page(browser, url, pki, "choijw")  # the registered terminal
    try:
        sign_in(page, url, "guest01", CENTER_ADDRESS)
        assert "서울역 스마트워크센터 (업무망)" in page.inner_text("#center-here")
        page.goto(f"{url}/kiosk")
        assert "좌석 B01" in page.inner_text("#kiosk-seat")
        assert axe_violations(page) == []
    finally:
        context.close()
    context, page = terminal_page(browser, url, pki, "kimmj")  # a valid certificate, but no terminal's
    try:
        page.set_extra_http_headers(at(CENTER_ADDRESS))
        page.goto(f"{url}/login")
        page.fill("#username", "choijw")
        page.fill("#password", PASSWORD)
        page.keyboard.press("Enter")
        # The refusal is the answer page of the form's POST: wait for it, not for the page already loaded.
        refusal = "서울역 스마트워크센터에 등록된 단말기가 아닙니다"
        page.locator("#login-error", has_text=refusal).wait_for()
        assert page.inner_text("#login-error").startswith(refusal)
        assert axe_violations(page) == []
    finally:
        context.close()


def test_book_sign_in_at_a_terminal_by_its_certificate_check_in_log_off_and_export_csv(
    browser, tls_toy_centers_url, tls_toy_centers_config, lab_pki
):
    """Issue 15's whole day in Chromium: a seat booked ahead, a login at a registered terminal known by its
    device certificate, the check-in, the logoff, and the day in the CSV with Korean names intact."""
    url, pki = tls_toy_centers_url, lab_pki.pki
    admin = TerminalClient(url, pki)
    assert admin.login("kimmj").status == 200
    add_center(admin, unregistered_terminals="refuse", booking_policy="require_booking")
    device = {"name": "b01", "certificate": pki.users["choijw"].cert_path.read_text()}
    assert admin.post("/api/v1/admin/centers/seoul-station/terminals", json=device).status == 201
    # At home (no device certificate): book the seat of the current half hour.
    home = browser.new_context(locale="ko-KR", bypass_csp=True, ignore_https_errors=True)
    try:
        page = home.new_page()
        sign_in(page, url, "choijw")
        page.goto(f"{url}/reservations")
        start = slot_floor(utcnow()).astimezone(SEOUL)
        page.fill("#day", start.date().isoformat())
        page.select_option("#starts", f"{start:%H:%M}")
        end = start + dt.timedelta(minutes=30)
        page.select_option("#ends", "24:00" if end.date() != start.date() else f"{end:%H:%M}")
        page.click("#booking-form button[type=submit]")
        page.wait_for_url("**/reservations?booked=*")
        assert axe_violations(page) == []
    finally:
        home.close()
    # At the center's terminal: in with the booked seat, connect (check-in), log off (check-out).
    context, page = terminal_page(browser, url, pki, "choijw")
    try:
        sign_in(page, url, "choijw", CENTER_ADDRESS)
        assert "서울역 스마트워크센터 (업무망)" in page.inner_text("#center-here")
        page.locator("button.connect[data-pool=moef-office]").click()
        page.wait_for_url(f"{url}/console/*")
        assert axe_violations(page) == []
        page.click("#logoff")
        page.wait_for_url(f"{url}/desktops")
    finally:
        context.close()
    # The administrator's attendance page and CSV.
    office = browser.new_context(locale="ko-KR", bypass_csp=True, ignore_https_errors=True)
    try:
        page = office.new_page()
        sign_in(page, url, "kimmj")
        page.goto(f"{url}/admin/centers/attendance")
        row = page.locator("#attendance tr[data-user=choijw]")
        assert "최지우 (choijw)" in row.inner_text() and "서울역 스마트워크센터" in row.inner_text()
        assert axe_violations(page) == []
        with page.expect_download() as download:
            page.click("#attendance-csv")
        lines = download.value.path().read_text(encoding="utf-8").splitlines()
        (day,) = [line for line in lines if ",choijw," in line]
        assert lines[0].startswith("\ufeff날짜,사용자 ID,이름,센터")
        assert ",choijw,최지우,서울역 스마트워크센터,B01," in day
    finally:
        office.close()


CENTER_PAGES = [
    "/kiosk",
    "/reservations",
    "/transfers",
    "/transfers/approvals",
    "/admin/centers",
    "/admin/centers/seoul-station",
    "/admin/centers/attendance",
]


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_every_center_page_speaks_korean_and_english_with_no_axe_violations(axe_page, transfers_url, lang):
    """The pages of issue 15: headings in the page's language (Hangul in Korean only), zero violations."""
    page, url = axe_page, transfers_url
    add_center(signed_in(url, "kimmj"))
    sign_in(page, url, "kimmj", CENTER_ADDRESS)  # an administrator at a center terminal, on a walk-in seat
    for path in CENTER_PAGES:
        page.goto(f"{url}{path}?lang={lang}")
        assert page.get_attribute("html", "lang") == lang, path
        heading = page.inner_text("h1")
        assert any("\uac00" <= char <= "\ud7a3" for char in heading) == (lang == "ko"), (path, heading)
        assert axe_violations(page) == [], path
