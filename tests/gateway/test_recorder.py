"""Console recording through the real gateway from a real Xvnc: what is written, the failure modes each pool
setting chooses (on keeps the console, required refuses it), the audit lines, the metrics, and the purge."""

from __future__ import annotations

import datetime as dt
import json
import os

from sqlalchemy import select

from broker.db.models import AuditEvent
from broker.db.tokens import ConsolePolicy, ConsoleTarget
from broker.recordings import SERVER_DATA, SERVER_INIT, list_recordings, read_records, recording_path
from gateway.config import GatewaySettings
from gateway.recorder import RecordingService
from monitoring.metrics import RecordingFailure
from tests.fixtures.gateway import RfbBrowser, eventually, metric, read_close, run_async, running_gateway
from tests.fixtures.recordings import (
    BLUE,
    RED,
    XVNC_PASSWORD,
    gateway_config_with_recording,
    record_two_colours,
    show_colour,
    watch_until_quiet,
)
from vdi.bench.recording import NOVNC_PIXEL_FORMAT


def audit_lines(console_db, action: str) -> list[tuple[str, str, dict]]:
    with console_db.db.transaction() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        return [(row.actor, row.result, row.detail) for row in rows]


def test_the_recording_holds_exactly_what_the_browser_got_from_its_serverinit_on(tmp_path, console_db, xvnc):
    root = tmp_path / "recordings"
    config = gateway_config_with_recording(tmp_path, console_db.url, root)
    written_before = metric("vdi_gateway_recording_bytes_written_total")
    segments_before = metric("vdi_gateway_recording_segments_total")

    recorded = run_async(record_two_colours(config, console_db, xvnc))

    index = recorded.index
    assert (index.state, index.failure) == ("complete", None)
    assert index.username.startswith("user-") and index.pool.startswith("pool-")
    assert index.desktop.startswith("desktop-") and index.id.startswith(index.session_id + "/")
    assert index.ended_at is not None and index.duration_ms >= recorded.blue_from_ms > recorded.red_until_ms
    records = list(read_records(recording_path(root, index.id)))
    assert records[0] == (SERVER_INIT, 0, recorded.server_init)
    assert b"".join(data for kind, _, data in records[1:] if kind == SERVER_DATA) == recorded.received
    assert index.raw_bytes == len(recorded.server_init) + len(recorded.received)
    on_disk = sum(
        (recording_path(root, index.id) / segment.name).stat().st_size for segment in index.segments
    )
    assert index.bytes == on_disk > 0
    assert metric("vdi_gateway_recording_bytes_written_total") - written_before == on_disk
    assert metric("vdi_gateway_recording_segments_total") - segments_before == len(index.segments)
    assert metric("vdi_gateway_recordings_active") == 0
    [(actor, result, detail)] = audit_lines(console_db, "console.recording")
    assert (actor, result, detail["recording"], detail["mode"]) == (index.username, "started", index.id, "on")


def refused_or_not(tmp_path, console_db, xvnc, recording: str):
    """A console whose recording cannot start (less free space than required); (close code, server init)."""
    root = tmp_path / "recordings"
    config = gateway_config_with_recording(tmp_path, console_db.url, root)
    config.gateway.recording_min_free_mb = 1 << 40  # more than any disk: "disk full"
    session = console_db.add_session(vnc_port=xvnc.port, vnc_password=XVNC_PASSWORD)

    async def scenario():
        async with running_gateway(config, console_db.db) as gateway:
            conn = await gateway.connect(console_db.issue(session, policy=ConsolePolicy(recording=recording)))
            if recording == "required":
                closed, server_init = await read_close(conn), None
            else:
                closed, server_init = None, await RfbBrowser(conn).handshake()
                conn.close()
            # The audit line is written beside the console, not before it opens or closes.
            await eventually(lambda: audit_lines(console_db, "console.recording"), what="the audit line")
            return closed, server_init

    return run_async(scenario()), root


def test_on_keeps_the_console_when_recording_cannot_start(tmp_path, console_db, xvnc):
    failures = metric("vdi_gateway_recording_failures_total", reason="disk_full")
    (closed, server_init), root = refused_or_not(tmp_path, console_db, xvnc, "on")
    assert closed is None and server_init.width == 320
    assert list_recordings(root) == []
    assert metric("vdi_gateway_recording_failures_total", reason="disk_full") == failures + 1
    [(_, result, detail)] = audit_lines(console_db, "console.recording")
    assert (result, detail["reason"], detail["recording"]) == ("failed", "disk_full", None)


def test_required_refuses_the_console_when_recording_cannot_start(tmp_path, console_db, xvnc):
    refused = metric("vdi_gateway_tunnels_refused_total", reason="recording")
    (closed, _), root = refused_or_not(tmp_path, console_db, xvnc, "required")
    assert closed == (1011, "console recording unavailable")
    assert list_recordings(root) == []
    assert metric("vdi_gateway_tunnels_refused_total", reason="recording") == refused + 1
    [(_, result, detail)] = audit_lines(console_db, "console.recording")
    assert (result, detail["reason"], detail["mode"]) == ("failed", "disk_full", "required")


def test_a_desktop_without_a_vnc_password_is_not_recorded(tmp_path, console_db, fake_vnc):
    root = tmp_path / "recordings"
    config = gateway_config_with_recording(tmp_path, console_db.url, root)
    session = console_db.add_session(vnc_port=fake_vnc.port)
    failures = metric("vdi_gateway_recording_failures_total", reason="unframed")

    async def scenario():
        async with fake_vnc.serving(), running_gateway(config, console_db.db) as gateway:
            conn = await gateway.connect(
                console_db.issue(session, policy=ConsolePolicy(recording="required"))
            )
            closed = await read_close(conn)
            await eventually(lambda: audit_lines(console_db, "console.recording"), what="the audit line")
            return closed

    assert run_async(scenario()) == (1011, "console recording unavailable")
    assert metric("vdi_gateway_recording_failures_total", reason="unframed") == failures + 1


def test_the_purge_removes_recordings_past_their_retention_and_keeps_the_rest(tmp_path, console_db, xvnc):
    root = tmp_path / "recordings"
    config = gateway_config_with_recording(tmp_path, console_db.url, root, recording_retention_days=30)
    old = run_async(record_two_colours(config, console_db, xvnc)).index
    new = run_async(record_two_colours(config, console_db, xvnc)).index
    # Age the first one: its index says it ended 31 days ago.
    old_dir = recording_path(root, old.id)
    data = json.loads((old_dir / "index.json").read_text())
    data["ended_at"] = (dt.datetime.now(dt.UTC) - dt.timedelta(days=31)).isoformat()
    (old_dir / "index.json").write_text(json.dumps(data))
    purged_before = metric("vdi_gateway_recordings_purged_total")

    async def scenario():
        async with running_gateway(config, console_db.db) as gateway:
            return await gateway.app.recordings.purge()

    assert run_async(scenario()) == [old.id]
    assert not old_dir.exists() and not old_dir.parent.exists()
    assert [index.id for index in list_recordings(root)] == [new.id]
    assert metric("vdi_gateway_recordings_purged_total") == purged_before + 1


def test_an_unfinished_recording_is_purged_by_the_age_of_its_files(tmp_path, console_db, xvnc):
    root = tmp_path / "recordings"
    config = gateway_config_with_recording(tmp_path, console_db.url, root, recording_retention_days=1)
    index = run_async(record_two_colours(config, console_db, xvnc)).index
    directory = recording_path(root, index.id)
    data = json.loads((directory / "index.json").read_text())
    (directory / "index.json").write_text(json.dumps(data | {"ended_at": None, "state": "recording"}))
    two_days_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).timestamp()
    for path in directory.iterdir():
        os.utime(path, (two_days_ago, two_days_ago))

    async def scenario():
        async with running_gateway(config, console_db.db) as gateway:
            return await gateway.app.recordings.purge()

    assert run_async(scenario()) == [index.id]


def fail_midway(tmp_path, console_db, xvnc, recording: str):
    """A recorded console whose disk 'fills up' after it started (the free-space check at a new segment
    fails); (close code and reason or None, RFB bytes the browser got after the failure, the index)."""
    root = tmp_path / "recordings"
    config = gateway_config_with_recording(tmp_path, console_db.url, root)
    config.gateway.recording_segment_mb = 0  # every record closes its segment: a free-space check each
    session = console_db.add_session(vnc_port=xvnc.port, vnc_password=XVNC_PASSWORD)

    async def scenario():
        await show_colour(xvnc, RED)
        async with running_gateway(config, console_db.db) as gateway:
            conn = await gateway.connect(console_db.issue(session, policy=ConsolePolicy(recording=recording)))
            browser = RfbBrowser(conn)
            await browser.handshake()
            browser.send(NOVNC_PIXEL_FORMAT)
            await watch_until_quiet(browser)
            config.gateway.recording_min_free_mb = 1 << 40
            before = len(browser.rfb)
            await show_colour(xvnc, BLUE)
            if recording == "required":
                closed, after = await read_close(conn), 0
            else:
                await watch_until_quiet(browser)
                conn.close()
                closed, after = None, len(browser.rfb) - before
            await eventually(
                lambda: len(audit_lines(console_db, "console.recording")) == 2, what="audit lines"
            )
            return closed, after

    closed, after = run_async(scenario())
    [index] = list_recordings(root)
    return closed, after, index


def test_a_recording_failing_midway_ends_a_required_console(tmp_path, console_db, xvnc):
    closed, _, index = fail_midway(tmp_path, console_db, xvnc, "required")
    assert closed == (1011, "console recording failed")
    assert (index.state, index.failure) == ("failed", "disk_full")
    results = [
        (result, detail.get("reason")) for _, result, detail in audit_lines(console_db, "console.recording")
    ]
    assert results == [("started", None), ("failed", "disk_full")]


def test_a_recording_failing_midway_keeps_an_optional_console(tmp_path, console_db, xvnc):
    closed, after, index = fail_midway(tmp_path, console_db, xvnc, "on")
    assert closed is None and after > 0
    assert (index.state, index.failure) == ("failed", "disk_full")
    assert index.segments and index.raw_bytes > 0


def test_a_writer_too_far_behind_stops_the_recording_and_says_why(tmp_path):
    """More queued than gateway.recording_backlog_mb: the recorder stops at once instead of buffering."""
    root = tmp_path / "recordings"
    settings = GatewaySettings(recording_dir=root, recording_min_free_mb=0, recording_backlog_mb=1)
    target = ConsoleTarget("5f0c2b9e-3333-4d3c-8e55-1a2b3c4d5e6f", 7, "127.0.0.1", 5900, username="kimmj")
    failures_before = metric("vdi_gateway_recording_failures_total", reason="backlog")

    async def scenario():
        service = RecordingService(settings)
        reasons = []
        recorder = await service.start(target, b"server-init", reasons.append)
        recorder.server(b"x" * 1000)
        recorder.server(b"y" * (2 << 20))  # one chunk over the backlog: refused before it is queued
        recorder.server(b"z" * 1000)  # and nothing after
        recorder.close()
        await service.stop()
        return reasons, recorder.id

    reasons, recording_id = run_async(scenario())
    assert reasons == [RecordingFailure.BACKLOG]
    [index] = list_recordings(root)
    assert (index.id, index.state, index.failure) == (recording_id, "failed", "backlog")
    records = list(read_records(recording_path(root, recording_id)))
    assert [(kind, data[:1]) for kind, _, data in records] == [(SERVER_INIT, b"s"), (SERVER_DATA, b"x")]
    assert metric("vdi_gateway_recording_failures_total", reason="backlog") == failures_before + 1
    assert metric("vdi_gateway_recordings_active") == 0
