"""`vdi bench time-to-desktop` runs against a real broker and gateway and prints JSON (no timing asserted)."""

import json
import subprocess
import sys

import pytest

from tests.fixtures.common import ROOT

pytestmark = pytest.mark.e2e


def test_time_to_desktop_prints_json_for_a_cold_connect(stack_factory, demo_users):
    stack = stack_factory()
    user = next(u for u in demo_users if "mois" in u.groups)
    command = [
        sys.executable,
        "-m",
        "vdi.cli",
        "--config",
        str(stack.config_path),
        "bench",
        "time-to-desktop",
    ]
    command += ["--runs", "1", "--user", user.uid, "--password", user.password, "--prewarmed-pool", ""]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "time-to-desktop"
    assert report["cold"]["pool"] == "mois-office" and report["cold"]["runs"] == 1
    assert report["cold"]["p50_ms"] > 0
    # The run went on until the demo desktop's own screen (not only the firmware's) was drawn.
    screen = report["cold"]["desktop_screen"]
    assert (screen["runs"], screen["missing"]) == (1, 0)
    assert screen["p50_ms"] >= report["cold"]["p50_ms"]
    assert report["virt"] in ("kvm", "qemu")
    assert "prewarmed" not in report


def test_time_to_desktop_of_a_session_pool_waits_for_the_panel(sbc_stack, sbc_providers):
    command = [sys.executable, "-m", "vdi.cli", "--config", str(sbc_stack.config_path), "bench"]
    command += [
        "time-to-desktop",
        "--runs",
        "2",
        "--pool",
        "mois-sbc",
        "--prewarmed-pool",
        "",
        "--cold-pool",
        "",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "cold" not in report and "prewarmed" not in report
    session = report["session"]
    assert (session["pool"], session["runs"]) == ("mois-sbc", 2)
    # Each run went on until the session's panel was drawn, and logged off: no session is left.
    screen = session["desktop_screen"]
    assert (screen["runs"], screen["missing"]) == (2, 0)
    assert screen["p50_ms"] >= session["p50_ms"]
    assert all(provider.list_desktops() == [] for provider in sbc_providers.values())
