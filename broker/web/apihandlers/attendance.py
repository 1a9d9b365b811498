"""/api/v1/attendance: my days at centers; /api/v1/admin/attendance: everyone's, as JSON or CSV, and
/api/v1/admin/attendance/corrections: an administrator's correction, with a reason (broker/attendance.py).

`from` and `to` are local days (YYYY-MM-DD, inclusive; default today in Asia/Seoul); `format=csv` answers
UTF-8 CSV with a byte order mark, headers in the request's language (Korean unless `lang=en`).
"""

from __future__ import annotations

import datetime as dt
from functools import partial
from zoneinfo import ZoneInfo

from broker.attendance import CorrectionRequest, as_csv, correct, daily_records
from broker.db.models import utcnow
from broker.web.apihandlers.base import AdminAPIHandler, APIHandler
from broker.web.apihandlers.centers import parse_day

DEFAULT_ZONE = ZoneInfo("Asia/Seoul")


class AttendanceQuery:
    def day_range(self) -> tuple[dt.date, dt.date]:
        today = utcnow().astimezone(DEFAULT_ZONE).date()
        first = parse_day(self.get_query_argument("from", None), today, "from")
        return first, parse_day(self.get_query_argument("to", None), first, "to")


class MyAttendanceAPIHandler(AttendanceQuery, APIHandler):
    async def get(self) -> None:
        user = self.require_user()
        first, last = self.day_range()
        records = await self.db.run(partial(daily_records, first=first, last=last, username=user.username))
        self.write_json({"records": [r.as_json() for r in records]})


class AttendanceAdminAPIHandler(AttendanceQuery, AdminAPIHandler):
    async def get(self) -> None:
        self.require_admin()
        first, last = self.day_range()
        records = await self.db.run(
            partial(
                daily_records,
                first=first,
                last=last,
                center=self.get_query_argument("center", None) or None,
                username=self.get_query_argument("user", None) or None,
            )
        )
        if self.get_query_argument("format", "json") != "csv":
            self.write_json({"records": [r.as_json() for r in records]})
            return
        lang = self.get_query_argument("lang", "ko")
        self.set_header("Content-Type", "text/csv; charset=UTF-8")
        self.set_header("Content-Disposition", f'attachment; filename="attendance-{first}-{last}.csv"')
        self.finish(as_csv(records, lang if lang in ("ko", "en") else "ko"))


class CorrectionsAdminAPIHandler(AdminAPIHandler):
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
