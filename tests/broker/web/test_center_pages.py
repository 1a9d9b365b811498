"""The centers' pages in Chromium: booking and cancelling a seat with the keyboard, a refused booking shown
with the field marked, the administrators' center list and occupancy, all with zero axe-core violations
in Korean and English."""

from tests.fixtures.accessibility import axe_violations
from tests.fixtures.broker import PASSWORD
from tests.fixtures.broker_api import signed_in
from tests.fixtures.centers import AWAY_ADDRESS, CENTER_ADDRESS, add_center, at, booking, tomorrow_at


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
