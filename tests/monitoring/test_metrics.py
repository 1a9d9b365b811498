"""The metrics module: every name is vdi_, snake case and carries its unit, and every label whose
values are an Enum has each of its series at zero from the start (a fresh process, nothing counted)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys

import pytest
from prometheus_client import Counter, Gauge, Histogram

from monitoring import metrics
from tests.fixtures.common import ROOT

METRICS = {
    attribute: value
    for attribute, value in vars(metrics).items()
    if isinstance(value, Counter | Gauge | Histogram)
}

# Each labelled metric whose series exist at import: its label names, in order, and the Enums of their values.
ENUM_LABELS = {
    "LOGINS": (metrics.LoginMethod, metrics.LoginResult),
    "CONNECT_DURATION": (metrics.ConnectResult,),
    "TUNNELS_REFUSED": (metrics.TunnelRefusal,),
    "CONSOLE_TOKENS_REFUSED": (metrics.TokenRefusal,),
    "LEASES_HELD": (metrics.BackgroundJob,),
    "LEASE_CHANGES": (metrics.BackgroundJob, metrics.LeaseChange),
    "BYTES_RELAYED": (metrics.Direction,),
    "CLIPBOARD_TRANSFERS_STOPPED": (metrics.Direction, metrics.ClipboardResult),
    "RECORDING_FAILURES": (metrics.RecordingFailure,),
    "PLACEMENTS": (metrics.PlacementResult, metrics.PlacementReason),
    "PLACEMENT_CLAIM_CONFLICTS": (metrics.ClaimConflict,),
    "HOSTS": (metrics.HostHealth, metrics.HostAdminState),
    "LOCKOUTS": (metrics.LockoutKind,),
    "TOTP_VERIFICATIONS": (metrics.TotpResult,),
    "SESSIONS_REVOKED": (metrics.SignOutCause,),
    "FORWARDED_FOR_IGNORED": (metrics.ForwardedForIgnored,),
    "CERTIFICATE_LOGINS": (metrics.CertificateLoginOutcome,),
    "REVOCATION_CHECKS": (metrics.RevocationSource, metrics.RevocationResult),
    "IMAGE_CHECKSUM_VERIFICATIONS": (metrics.ImageCopy, metrics.ChecksumResult),
    "ORPHAN_DOMAINS": (metrics.OrphanAction,),
    "RECONCILE_FIXES": (metrics.ReconcileFix,),
    "SSH_CHANNEL_OPENS": (metrics.SshChannelResult,),
    "SSH_HOST_KEY_REFUSALS": (metrics.HostKeyRefusal,),
    "POWER_ACTION_DURATION": (metrics.PowerAction, metrics.PowerResult),
    "ROLLOUTS_FINISHED": (metrics.RolloutResult,),
    "SEAT_BOOKINGS": (metrics.SeatBookingResult,),
    "CENTER_LOGINS_REFUSED": (metrics.CenterLoginRefusal,),
    "TRANSFERS": (metrics.TransferOutcome,),
}
# Labelled metrics whose series appear later: per configured pool (made by the managers when they start),
# or with values that are not known in advance (virtualisation type, libvirt event, spare outcome).
SERIES_MADE_LATER = {
    "DESKTOP_BOOT_DURATION",
    "SPARES_NOT_READY",
    "DOMAIN_EVENTS",
    "POOL_DESKTOPS",
    "DESKTOPS_BY_POWER",
    "POOL_ROLLOUT_STATE",
    "POOL_CAPACITY_SHORTFALL",
}

# The series of a freshly imported metrics module, one list of (labels, value) per metric attribute:
# the value samples only (_total, _count, the gauge itself), in a process where nothing has counted yet.
DUMP_FRESH_SERIES = """
import json
from prometheus_client import Counter, Gauge, Histogram
from monitoring import metrics

series = {}
for attribute, metric in vars(metrics).items():
    if isinstance(metric, (Counter, Gauge, Histogram)):
        (family,) = metric.collect()
        value_names = {family.name, family.name + "_total", family.name + "_count"}
        series[attribute] = [[s.labels, s.value] for s in family.samples if s.name in value_names]
print(json.dumps(series))
"""


def metric_name(metric) -> str:
    (family,) = metric.describe()
    return family.name


@pytest.fixture(scope="module")
def fresh_series() -> dict[str, list]:
    result = subprocess.run(
        [sys.executable, "-c", DUMP_FRESH_SERIES], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout)


def test_every_name_is_vdi_snake_case_with_its_unit():
    for attribute, metric in METRICS.items():
        name = metric_name(metric)
        assert re.fullmatch(r"vdi(_[a-z]+)+", name), attribute
        if isinstance(metric, Histogram):
            assert name.endswith("_seconds"), attribute
        if isinstance(metric, Counter):
            (family,) = metric.collect()
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), attribute
        if isinstance(metric, Gauge):
            assert not name.endswith(("_total", "_seconds")), attribute


def test_names_are_unique():
    names = [metric_name(metric) for metric in METRICS.values()]
    assert len(names) == len(set(names))


def test_every_labelled_metric_says_where_its_series_come_from():
    labelled = {attribute for attribute, metric in METRICS.items() if metric._labelnames}
    assert labelled == set(ENUM_LABELS) | SERIES_MADE_LATER
    assert not set(ENUM_LABELS) & SERIES_MADE_LATER


@pytest.mark.parametrize("attribute", sorted(ENUM_LABELS))
def test_enum_labels_make_every_series_at_zero(fresh_series, attribute):
    metric, enums = METRICS[attribute], ENUM_LABELS[attribute]
    assert len(metric._labelnames) == len(enums)
    expected = [
        dict(zip(metric._labelnames, (member.value for member in members), strict=True))
        for members in itertools.product(*enums)
    ]
    series = fresh_series[attribute]
    assert sorted(json.dumps(labels, sort_keys=True) for labels, _ in series) == sorted(
        json.dumps(labels, sort_keys=True) for labels in expected
    )
    assert {value for _, value in series} == {0.0}


@pytest.mark.parametrize("attribute", sorted(SERIES_MADE_LATER))
def test_series_made_later_do_not_exist_at_import(fresh_series, attribute):
    assert fresh_series[attribute] == []


def test_unlabelled_metrics_start_at_zero(fresh_series):
    unlabelled = [attribute for attribute, metric in METRICS.items() if not metric._labelnames]
    assert unlabelled
    for attribute in unlabelled:
        assert fresh_series[attribute] == [[{}, 0.0]], attribute
