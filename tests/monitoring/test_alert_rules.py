"""The Prometheus alert rules (monitoring/prometheus/alerts.yml): valid for promtool, and each alert shown
firing and staying quiet by promtool's rule unit tests (alerts_test.yml)."""

from __future__ import annotations

import subprocess

from tests.fixtures.common import ROOT
from tests.fixtures.monitoring import (
    EXTERNAL_METRICS,
    RULES,
    RULES_TEST,
    label_problems,
    metric_names_in,
    rule_expressions,
    series_names,
)

PROMTOOL = "/usr/bin/promtool"  # Debian's prometheus package (scripts/setup.sh)


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_promtool_accepts_the_rules():
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests_pass():
    result = promtool("test", "rules", str(RULES_TEST))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alerts_operators_need_are_there():
    # Host down, no spare ready, placement failures, revocation source failing, gateway refusals rising,
    # the recordings' disk filling.
    needed = {
        "VdiHostDown",
        "VdiNoSpareReady",
        "VdiPlacementFailures",
        "VdiCertificateRevocationSourceFailing",
        "VdiGatewayTunnelsRefusedRising",
        "VdiRecordingsDiskFilling",
    }

    assert needed <= {alert for alert, _expr in rule_expressions()}


def test_every_alert_has_a_unit_test():
    tested = set(metric_names_in(RULES_TEST.read_text(), pattern=r"alertname: (\w+)"))

    assert {alert for alert, _expr in rule_expressions()} <= tested


def test_rules_use_only_declared_metrics():
    used = {name for _alert, expr in rule_expressions() for name in metric_names_in(expr)}

    assert used - series_names() - EXTERNAL_METRICS == set()
    # The alerts the project promises (docs/metrics.md#alert-rules).
    assert {"vdi_hosts", "vdi_pool_desktops", "vdi_placements_total"} <= used
    assert {"vdi_certificate_revocation_checks_total", "vdi_gateway_tunnels_refused_total"} <= used
    assert "node_filesystem_avail_bytes" in used


def test_rules_match_only_declared_labels_and_values():
    assert [problem for _alert, expr in rule_expressions() for problem in label_problems(expr)] == []
