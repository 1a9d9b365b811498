"""The Grafana dashboard (monitoring/grafana/smartwork-vdi.json): the basics of Grafana's dashboard schema, and
only metrics that monitoring/metrics.py declares, so dashboard and code stay in step."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.monitoring import DASHBOARD, label_problems, metric_names_in, series_names

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def graph_panels(dashboard: dict) -> list[dict]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_dashboard_has_grafana_basics(dashboard):
    assert dashboard["uid"] == "smartwork-vdi"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_every_panel_has_a_datasource_targets_and_a_place(dashboard):
    panels = graph_panels(dashboard)

    assert len(panels) >= 20
    for panel in panels:
        assert panel["title"], panel["id"]
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_uses_only_declared_metrics(dashboard):
    exprs = [target["expr"] for panel in graph_panels(dashboard) for target in panel["targets"]]
    used = {name for expr in exprs for name in metric_names_in(expr)}

    assert used - series_names() == set()
    # Logons, connect latency, tunnels, bytes, placement, host health, spares, rollouts, certificates, leases.
    expected = {
        "vdi_logins_total",
        "vdi_connect_duration_seconds_bucket",
        "vdi_gateway_tunnels_open",
        "vdi_gateway_bytes_relayed_total",
        "vdi_placements_total",
        "vdi_hosts",
        "vdi_pool_desktops",
        "vdi_pool_rollout_state",
        "vdi_certificate_revocation_checks_total",
        "vdi_background_leases_held",
    }
    assert expected <= used


def test_dashboard_matches_only_declared_labels_and_values(dashboard):
    exprs = [target["expr"] for panel in graph_panels(dashboard) for target in panel["targets"]]

    assert [problem for expr in exprs for problem in label_problems(expr)] == []


# What an operator looks for on the dashboard (issue: logons, connect latency, tunnels, bytes, placement, host
# health, spares, rollouts, certificate checks), each by a metric some panel must chart.
TOPICS = {
    "logons": "vdi_logins_total",
    "connect latency": "vdi_connect_duration_seconds_bucket",
    "tunnels": "vdi_gateway_tunnels_open",
    "tunnels refused": "vdi_gateway_tunnels_refused_total",
    "bytes": "vdi_gateway_bytes_relayed_total",
    "placement": "vdi_placements_total",
    "host health": "vdi_hosts",
    "spares": "vdi_pool_desktops",
    "rollouts": "vdi_pool_rollout_state",
    "certificate checks": "vdi_certificate_revocation_checks_total",
}


def test_every_topic_an_operator_looks_for_has_a_panel(dashboard):
    charted = {
        name
        for panel in graph_panels(dashboard)
        for target in panel["targets"]
        for name in metric_names_in(target["expr"])
    }
    missing = {topic: metric for topic, metric in TOPICS.items() if metric not in charted}
    assert missing == {}
