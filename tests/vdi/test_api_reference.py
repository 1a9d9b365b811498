"""docs/api.md is generated from the broker's OpenAPI description and kept in step with it."""

from tests.fixtures.common import ROOT
from vdi.api_reference import render


def test_docs_api_md_is_in_step_with_the_served_description():
    assert (ROOT / "docs/api.md").read_text() == render(), (
        "docs/api.md is stale: run `python -m vdi.api_reference > docs/api.md`"
    )


def test_every_operation_has_a_row():
    rows = [line for line in render().splitlines() if line.startswith("| ") and "`/api/v1" in line]
    assert len(rows) == 59
    assert "| GET | `/api/v1/admin/audit/export?user&action&since&until&limit` | admin |" in "\n".join(rows)
    assert "| GET | `/api/v1/admin/attendance?from&to&center&user&format` | admin |" in "\n".join(rows)
