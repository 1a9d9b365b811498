"""Transfer requests between network zones: request → approval → delivery, rejection delivers nothing,
limits and the scanning hook (a real command), who may approve, and the audit (never the content)."""

import base64

import pytest

from broker.db.models import AuditEvent, TransferRequest
from tests.fixtures.broker_api import signed_in
from tests.fixtures.centers import INTERNET_ADDRESS, add_center, at, stored

EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def ask(client, **body):
    return client.post(
        "/api/v1/transfers", json={"to_zone": "internet", "reason": "보고서 외부 송부", **body}
    )


def test_a_text_goes_from_request_to_approval_to_delivery(transfers_url, transfers_config):
    user, approver = signed_in(transfers_url, "kimmj"), signed_in(transfers_url, "parksec")
    asked = ask(user, text="회의 자료: 3층 대회의실")
    assert asked.status == 201, asked.text
    request = asked.json()
    assert (request["state"], request["from_zone"], request["scan_result"]) == (
        "pending",
        "business",
        "clean",
    )
    assert user.get(f"/api/v1/transfers/{request['id']}/content").status == 409  # not approved yet
    waiting = approver.get("/api/v1/transfers/approvals").json()["transfers"]
    assert [t["id"] for t in waiting] == [request["id"]]
    decided = approver.post(
        f"/api/v1/transfers/{request['id']}/decision", json={"approve": True, "note": "확인"}
    )
    assert decided.status == 200 and decided.json()["state"] == "approved"
    delivered = user.get(f"/api/v1/transfers/{request['id']}/content")
    assert delivered.status == 200 and delivered.text == "회의 자료: 3층 대회의실"
    assert user.get(f"/api/v1/transfers/{request['id']}/content").status == 409  # once
    (row,) = stored(transfers_config, TransferRequest)
    assert (row.state, row.content) == ("delivered", None)
    events = stored(transfers_config, AuditEvent, AuditEvent.action.like("transfer.%"))
    assert [e.action for e in events] == ["transfer.request", "transfer.decide", "transfer.deliver"]
    assert all("회의" not in str(e.detail) for e in events)  # size and hash, never the content


def test_a_rejected_file_delivers_nothing(transfers_url, transfers_config):
    user, approver = signed_in(transfers_url, "kimmj"), signed_in(transfers_url, "parksec")
    content = base64.b64encode(b"quarterly,figures\n1,2\n").decode()
    request = ask(user, filename="figures.csv", content_base64=content).json()
    assert request["kind"] == "file"
    rejected = approver.post(
        f"/api/v1/transfers/{request['id']}/decision", json={"approve": False, "note": "불필요"}
    )
    assert rejected.json()["state"] == "rejected"
    assert user.get(f"/api/v1/transfers/{request['id']}/content").status == 409
    assert stored(transfers_config, TransferRequest)[0].content is None


def test_the_scanning_hook_blocks_an_infected_file(transfers_url, transfers_config):
    user, approver = signed_in(transfers_url, "kimmj"), signed_in(transfers_url, "parksec")
    request = ask(user, filename="note.txt", content_base64=base64.b64encode(EICAR.encode()).decode()).json()
    assert (request["state"], request["scan_result"]) == ("blocked", "infected")
    assert approver.get("/api/v1/transfers/approvals").json()["transfers"] == []
    (row,) = stored(transfers_config, TransferRequest)
    assert row.content is None
    (event,) = stored(transfers_config, AuditEvent, AuditEvent.action == "transfer.request")
    assert (event.result, event.detail["scan"]) == ("blocked", "infected")


def test_only_an_approver_sharing_a_group_decides_and_never_their_own(transfers_url):
    user = signed_in(transfers_url, "choijw")  # moef: parksec (mois, security) is not in their group
    approver = signed_in(transfers_url, "parksec")
    request = ask(user, text="기재부 자료").json()
    assert approver.get("/api/v1/transfers/approvals").json()["transfers"] == []
    refused = approver.post(f"/api/v1/transfers/{request['id']}/decision", json={"approve": True})
    assert refused.status == 403 and refused.json()["error"]["reason"] == "transfer_not_allowed"
    own = ask(approver, text="내 자료").json()
    assert approver.post(f"/api/v1/transfers/{own['id']}/decision", json={"approve": True}).status == 403


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": "x" * 1025}, "text"),  # over max_bytes
        ({"filename": "run.exe", "content_base64": base64.b64encode(b"MZ").decode()}, "filename"),
        ({"filename": "../etc/passwd.txt", "content_base64": base64.b64encode(b"x").decode()}, "filename"),
        ({"filename": "a.txt", "content_base64": "***"}, "content_base64"),
        ({}, "text"),  # neither text nor file
        ({"text": "x", "to_zone": "dmz"}, "to_zone"),
        ({"text": "x", "reason": ""}, "reason"),
    ],
)
def test_bad_requests_name_the_field_and_store_nothing(transfers_url, transfers_config, body, field):
    response = ask(signed_in(transfers_url, "kimmj"), **body)
    assert response.status == 400, response.text
    assert response.json()["error"]["field"] == field
    assert stored(transfers_config, TransferRequest) == []


def test_at_a_center_terminal_a_request_leaves_the_terminals_zone(transfers_url):
    admin = signed_in(transfers_url, "kimmj")
    add_center(admin)
    wrong = admin.post(
        "/api/v1/transfers",
        json={"to_zone": "internet", "reason": "자료 이동", "text": "x"},
        headers=at(INTERNET_ADDRESS),
    )
    assert wrong.status == 400 and wrong.json()["error"]["field"] == "to_zone"
    right = admin.post(
        "/api/v1/transfers",
        json={"to_zone": "business", "reason": "자료 이동", "text": "x"},
        headers=at(INTERNET_ADDRESS),
    )
    assert right.status == 201 and right.json()["from_zone"] == "internet"
