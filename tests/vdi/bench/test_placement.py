"""`vdi bench placement` runs on a small inventory and prints valid JSON with zero overcommit.

Not a timed test: the figures themselves are for the report (docs/placement.md), not asserted.
"""

import json

from vdi.cli import main


def test_small_run_prints_json_with_no_host_over_capacity(capsys, tmp_path):
    size = ["--hosts", "12", "--concurrency", "4", "--requests", "60"]
    code = main(["bench", "placement", *size, "--json", "--database", str(tmp_path / "bench.db")])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (report["hosts"], report["concurrency"], report["requests"]) == (12, 4, 60)
    assert [result["policy"] for result in report["results"]] == ["spread", "pack"]
    for result in report["results"]:
        assert result["hosts_over_capacity"] == 0
        assert result["placed"] + result["no_host"] + result["gave_up_after_retries"] == 60
        assert result["decision_ms"]["p99"] >= result["decision_ms"]["p50"] > 0
        assert set(result["balance"]) >= {"max_over_mean", "coefficient_of_variation"}
    spread, pack = report["results"]
    # Packing concentrates desktops on fewer hosts than spreading does.
    assert pack["balance"]["hosts_used"] < spread["balance"]["hosts_used"]


def test_two_brokers_on_postgresql_never_overcommit_and_report_their_cpu(capsys):
    size = ["--hosts", "6", "--concurrency", "8", "--requests", "80"]
    code = main(
        ["bench", "placement", *size, "--policy", "spread", "--postgresql", "--brokers", "2", "--json"]
    )
    (result,) = json.loads(capsys.readouterr().out)["results"]
    assert code == 0
    assert (result["database"], result["brokers"], result["hosts_over_capacity"]) == ("postgresql", 2, 0)
    assert result["placed"] + result["no_host"] + result["gave_up_after_retries"] == 80
    # CPU per desktop placed, of the broker processes and of the PostgreSQL server (not timed: only there).
    assert result["cpu_ms_per_placement"]["brokers"] > 0
    # The server's figure counts in clock ticks: a run this small may round to zero, but it is measured.
    assert result["cpu_ms_per_placement"]["database"] >= 0
