"""`vdi bench login-timing` starts its own slapd, times refusals and prints JSON for each set-up.

Not a timed test: the figures are for the report (docs/login-security.md), not asserted.
"""

import json

from vdi.cli import main


def test_small_run_prints_json_for_the_three_setups(capsys, tmp_path):
    code = main(["--config", str(tmp_path / "none.toml"), "bench", "login-timing", "--runs", "3"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["runs"] == 3
    for setup in ("missing_decoy_no_floor", "decoy_entry_no_floor", "decoy_entry_and_floor"):
        figures = report[setup]
        assert (
            figures["known_user_wrong_password"]["p90_ms"] >= figures["known_user_wrong_password"]["p50_ms"]
        )
        assert figures["unknown_user"]["p50_ms"] > 0
    # With the floor, every refusal took at least the floor.
    assert report["decoy_entry_and_floor"]["unknown_user"]["p50_ms"] >= report["refusal_floor_s"] * 1000
