"""`vdi bench session-density` starts real sessions on a lab session host and prints JSON.

Not a timed test: the figures are for the report (docs/session-hosts.md), not asserted; only that each session
was measured and none is left behind.
"""

import json

from tests.fixtures.session_hosts import session_host_provider
from vdi.cli import main


def test_small_run_prints_json_and_leaves_no_session(capsys, tmp_path, lab_session_hosts):
    args = ["bench", "session-density", "--host", "sh2", "--max-sessions", "2", "--idle-s", "0.5"]
    code = main(["--config", str(tmp_path / "none.toml"), *args])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and (report["host"], report["sessions"]) == ("sh2", 2)
    assert report["start_to_ready_s"]["max"] >= report["start_to_ready_s"]["p50"] > 0
    assert report["idle_memory_mib_per_session"]["max"] >= report["idle_memory_mib_per_session"]["p50"] > 0
    provider = session_host_provider(lab_session_hosts, "sh2")
    try:
        assert provider.list_desktops() == []
    finally:
        provider.close()
    assert lab_session_hosts.healthy("sh2")  # the bench found the host up and left it up
