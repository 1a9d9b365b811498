"""/api/v1/attendance: my days at centers; /api/v1/admin/attendance: everyone's, as JSON or CSV, and
/api/v1/admin/attendance/corrections: an administrator's correction, with a reason (broker/attendance.py).

`from` and `to` are local days (YYYY-MM-DD, inclusive; default today in Asia/Seoul); `format=csv` answers
UTF-8 CSV with a byte order mark, headers in the request's language (Korean unless `lang=en`).
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker.attendance import CorrectionRequest, as_csv, correct, daily_records
from broker.db.models import utcnow
from broker.web.apihandlers.base import AdminAPIHandler, APIHandler
from broker.web.apihandlers.centers import plausible_day
from broker.web.openapi import ATTENDANCE_RECORD, STR, Operation, array, obj

DEFAULT_ZONE = ZoneInfo("Asia/Seoul")


class DayRange(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    first: dt.date | None = Field(
        None, alias="from", description="the first local day (YYYY-MM-DD); default today in Asia/Seoul"
    )
    to: dt.date | None = Field(None, description="the last local day, inclusive; default `from`")

    _plausible = field_validator("first", "to")(plausible_day)

    def days(self) -> tuple[dt.date, dt.date]:
        first = self.first or utcnow().astimezone(DEFAULT_ZONE).date()
        return first, self.to or first


class AttendanceSearch(DayRange):
    center: str | None = Field(None, max_length=64, description="one center's records")
    user: str | None = Field(None, max_length=128, description="one user's records")
    format: Literal["json", "csv"] = Field(
        "json", description="csv: UTF-8 with a byte order mark, headers in Korean unless lang=en"
    )


RECORDS = obj("records", records=array(ATTENDANCE_RECORD))


class MyAttendanceAPIHandler(APIHandler):
    openapi = {
        "get": Operation("myAttendance", "My days at centers", RECORDS, query=DayRange, tags=("centers",))
    }

    async def get(self) -> None:
        user = self.require_user()
        first, last = self.parse_query(DayRange).days()
        records = await self.db.run(partial(daily_records, first=first, last=last, username=user.username))
        self.write_json({"records": [r.as_json() for r in records]})


class AttendanceAdminAPIHandler(AdminAPIHandler):
    openapi = {
        "get": Operation(
            "searchAttendance",
            "Everyone's days at centers, as JSON or as CSV",
            RECORDS,
            auth="admin",
            query=AttendanceSearch,
            other_media={"text/csv": STR},
            tags=("centers",),
        )
    }

    async def get(self) -> None:
        self.require_admin()
        search = self.parse_query(AttendanceSearch)
        first, last = search.days()
        records = await self.db.run(
            partial(daily_records, first=first, last=last, center=search.center, username=search.user)
        )
        if search.format != "csv":
            self.write_json({"records": [r.as_json() for r in records]})
            return
        lang = self.get_query_argument("lang", "ko")
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="attendance-{first}-{last}.csv"')
        self.finish(as_csv(records, lang if lang in ("ko", "en") else "ko"))


class CorrectionsAdminAPIHandler(AdminAPIHandler):
    openapi = {
        "post": Operation(
            "correctAttendance",
            "Correct a user's day at a center, with a reason (audited)",
            ATTENDANCE_RECORD,
            status=201,
            auth="admin",
            body=CorrectionRequest,
            tags=("centers",),
        )
    }

    async def post(self) -> None:
        admin = self.require_admin()
        request = self.parse_body(CorrectionRequest)
        record = await self.db.run(
            partial(correct, request=request, actor=admin.username, client_ip=self.client_ip)
        )
        self.write_json(record.as_json(), status=201)


default_handlers = [
    (r"/api/v1/attendance", MyAttendanceAPIHandler),
    (r"/api/v1/admin/attendance", AttendanceAdminAPIHandler),
    (r"/api/v1/admin/attendance/corrections", CorrectionsAdminAPIHandler),
]
