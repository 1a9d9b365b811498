"""`vdi bench recording` watches a real Xvnc through the gateway with recording on and prints JSON: storage
per hour from the recording's own index, and the relay's speed with recording off and on.

Not a timed test: the figures are for the report (docs/recording.md), not asserted.
"""

import json

from vdi.cli import main


def test_small_run_prints_storage_and_relay_figures(capsys):
    args = ["--seconds", "3", "--scenario", "terminal", "--geometry", "640x400", "--mb", "4"]
    code = main(["--config", "/nonexistent.toml", "bench", "recording", *args])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    storage = report["storage"]
    assert storage["geometry"] == "640x400" and storage["segments"] >= 1
    # What the browser got after ServerInit is what was recorded (plus the ServerInit itself).
    assert storage["recorded_rfb_bytes"] > storage["rfb_bytes_to_browser"] > 0
    assert storage["bytes_on_disk"] > 0 and storage["mb_per_hour"] > 0
    relay = report["relay"]
    assert relay["down_mb_s_recording_off"] > 0 and relay["down_mb_s_recording_on"] > 0
