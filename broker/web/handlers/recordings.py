"""The administrators' recording player: a list of console recordings, a player page, and the WebSocket
that replays one recording to the page's noVNC.

Only members of broker.admin_groups get anything here (403 for everyone else, the WebSocket included),
and every look at a recording is audited: opening its player page (`recording.view`) and each replay
stream (`recording.play`, with where it started and at what speed). The recordings directory is read
from broker.recording_dir, on executors (files are read and inflated off the event loop).

The replay speaks RFB to noVNC as a server with security type None, then sends the ServerInit and the
server messages of the recording with their original spacing divided by the speed. A seek is a new
stream: noVNC's decoders carry state (the zlib streams of Tight and ZRLE), so a picture can only be
rebuilt by decoding from the start; the stream sends every record before the seek point at once, without
waiting, and only then starts the clock. Pause and speed are text frames on the same socket.
docs/recording.md
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import tornado.web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from broker import errors
from broker.db.models import AuditEvent
from broker.recordings import (
    SERVER_DATA,
    SERVER_INIT,
    RecordingIndex,
    RecordingNotFound,
    list_recordings,
    read_index,
    read_records,
    recording_path,
)
from broker.web.base import BaseHandler
from broker.web.i18n import translator

log = logging.getLogger(__name__)

SESSION = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
NAME = r"\d{8}T\d{6}Z-[0-9a-f]{8}"
SPEEDS = (0.5, 1.0, 2.0, 4.0)
CATCH_UP_BATCH = 1 << 20  # bytes per WebSocket message while seeking (no waits between records)
POSITION_EVERY_S = 0.25
PLAYER_STRINGS = (
    "connecting",
    "playing",
    "paused",
    "ended",
    "seeking",
    "failed",
    "play",
    "pause",
)
SECURITY_NONE = 1


def is_admin(config, user) -> bool:
    admin_groups = {group.lower() for group in config.broker.admin_groups}
    return user is not None and bool({group.lower() for group in user.groups} & admin_groups)


def audit_row(actor: str, action: str, index: RecordingIndex, source_ip: str, **detail) -> AuditEvent:
    return AuditEvent(
        actor=actor,
        action=action,
        result="ok",
        target=index.id,
        source_ip=source_ip,
        detail={"session": index.session_id, "user": index.username, "desktop": index.desktop, **detail},
    )


class AdminPageMixin:
    """403 for anyone not in broker.admin_groups (a signed-out visitor too: these pages are not a login
    prompt), and the recordings directory."""

    def require_admin(self) -> None:
        if not is_admin(self.config, self.current_user):
            who = self.current_user.username if self.current_user else "anonymous"
            log.warning("recordings refused to %s (%s): not in broker.admin_groups", who, self.client_ip)
            raise errors.Forbidden("This needs a member of an administrator group (broker.admin_groups).")

    @property
    def recording_root(self) -> Path | None:
        return self.config.broker.recording_dir

    async def load_index(self, session_id: str, name: str) -> RecordingIndex:
        root = self.recording_root
        try:
            if root is None:
                raise RecordingNotFound(name)
            directory = recording_path(root, f"{session_id}/{name}")
            return await asyncio.get_running_loop().run_in_executor(None, read_index, directory)
        except RecordingNotFound:
            raise errors.NotFound("There is no such recording.") from None


class RecordingsHandler(AdminPageMixin, BaseHandler):
    async def get(self) -> None:
        self.require_admin()
        self.remember_language()
        username = self.get_query_argument("user", "").strip() or None
        session_id = self.get_query_argument("session", "").strip() or None
        recordings: list[RecordingIndex] = []
        if self.recording_root is not None:
            recordings = await asyncio.get_running_loop().run_in_executor(
                None, lambda: list_recordings(self.recording_root, username=username, session_id=session_id)
            )
        self.render(
            "recordings.html",
            recordings=recordings,
            user_filter=username or "",
            session_filter=session_id or "",
            configured=self.recording_root is not None,
            duration=duration_text,
        )


class RecordingPlayerHandler(AdminPageMixin, BaseHandler):
    async def get(self, session_id: str, name: str) -> None:
        self.require_admin()
        self.remember_language()
        index = await self.load_index(session_id, name)
        actor = self.current_user.username
        await self.db.run(lambda db: db.add(audit_row(actor, "recording.view", index, self.client_ip)))
        log.info("recording %s viewed by %s", index.id, actor)
        _ = translator(self.lang)
        self.render(
            "recording_player.html",
            recording=index,
            speeds=SPEEDS,
            duration=duration_text,
            strings={key: _(f"recordings.{key}") for key in PLAYER_STRINGS},
        )


def duration_text(ms: int) -> str:
    seconds = ms // 1000
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- the replay stream -------------------------------------------------------------------------------


def _number(text: str, kind: type, default):
    try:
        return kind(float(text))
    except (TypeError, ValueError, OverflowError):
        return default


def take_records(records: Iterator[tuple[int, int, bytes]], budget: int) -> list[tuple[int, int, bytes]]:
    """The next records up to about `budget` bytes (at least one unless the recording is over)."""
    batch, size = [], 0
    for record in records:
        batch.append(record)
        size += len(record[2])
        if size >= budget:
            break
    return batch


class PlayClock:
    """Recording time against wall time: speed, pause, and a start point."""

    def __init__(self, start_ms: int, speed: float) -> None:
        self.speed, self.paused = speed, False
        self._origin_ms, self._origin_wall = start_ms, time.monotonic()

    def position_ms(self) -> int:
        if self.paused:
            return self._origin_ms
        return int(self._origin_ms + (time.monotonic() - self._origin_wall) * 1000 * self.speed)

    def restart(self, at_ms: int) -> None:
        self._origin_ms, self._origin_wall = at_ms, time.monotonic()

    def rebase(self, speed: float | None = None, paused: bool | None = None) -> None:
        self._origin_ms, self._origin_wall = self.position_ms(), time.monotonic()
        if speed is not None:
            self.speed = speed
        if paused is not None:
            self.paused = paused

    def wait_s(self, time_ms: int) -> float | None:
        """Seconds until the record at `time_ms` is due; None while paused."""
        if self.paused:
            return None
        return max(0.0, (time_ms - self.position_ms()) / 1000 / self.speed)


class RecordingReplayHandler(AdminPageMixin, WebSocketHandler, BaseHandler):
    """WS /admin/recordings/<session>/<name>/replay?start_ms=&speed=: the recording, as an RFB server."""

    async def prepare(self) -> None:
        await super().prepare()
        self.require_admin()

    async def open(self, session_id: str, name: str) -> None:
        self.index = await self.load_index(session_id, name)
        self.start_ms = max(0, _number(self.get_query_argument("start_ms", "0"), int, 0))
        speed = _number(self.get_query_argument("speed", "1"), float, 1.0)
        self.clock = PlayClock(self.start_ms, speed if speed in SPEEDS else 1.0)
        self.changed = asyncio.Event()
        self.handshake = bytearray()
        self.stage = 0  # 0: version, 1: security type, 2: ClientInit, 3: replaying
        self.task: asyncio.Task | None = None
        actor, index = self.current_user.username, self.index
        detail = {"start_ms": self.start_ms, "speed": self.clock.speed}
        await self.db.run(
            lambda db: db.add(audit_row(actor, "recording.play", index, self.client_ip, **detail))
        )
        log.info("recording %s played by %s from %d ms", index.id, actor, self.start_ms)
        self.write_message(b"RFB 003.008\n", binary=True)

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._control(message)
        elif self.stage < 3:
            self.handshake += message
            self._advance_handshake()

    def _advance_handshake(self) -> None:
        wants = {0: 12, 1: 1, 2: 1}
        while self.stage < 3 and len(self.handshake) >= wants[self.stage]:
            taken = bytes(self.handshake[: wants[self.stage]])
            del self.handshake[: wants[self.stage]]
            if self.stage == 0:
                # Section 7.1.2: one security type, None; 3.3 clients get it as a U32 and skip the choice.
                minor_3 = taken == b"RFB 003.003\n"
                self.write_message(struct.pack(">I", SECURITY_NONE) if minor_3 else b"\x01\x01", binary=True)
                self.stage = 2 if minor_3 else 1
            elif self.stage == 1:
                self.write_message(b"\x00\x00\x00\x00", binary=True)  # SecurityResult OK (3.8)
                self.stage = 2
            else:  # ClientInit: the recording begins with the ServerInit
                self.stage = 3
                self.task = asyncio.create_task(self._replay())

    def _control(self, message: str) -> None:
        try:
            control = json.loads(message)
        except ValueError:
            return
        if control.get("speed") in SPEEDS:
            self.clock.rebase(speed=float(control["speed"]))
        if isinstance(control.get("paused"), bool):
            self.clock.rebase(paused=control["paused"])
        self.changed.set()
        self._send_position()

    async def _replay(self) -> None:
        loop = asyncio.get_running_loop()
        directory = recording_path(self.config.broker.recording_dir, self.index.id)
        records = read_records(directory)
        try:
            await self._play(loop, records)
            self._send_json({"state": "ended", "position_ms": self.index.duration_ms})
        except WebSocketClosedError:
            pass
        except Exception:
            log.exception("replay of recording %s failed", self.index.id)
            self.close(1011, "replay failed")

    async def _play(self, loop, records) -> None:
        pending = bytearray()
        last_position = 0.0
        while batch := await loop.run_in_executor(None, take_records, records, CATCH_UP_BATCH):
            for kind, time_ms, data in batch:
                if kind not in (SERVER_INIT, SERVER_DATA):
                    continue
                if time_ms <= self.start_ms:
                    pending += data  # before the seek point: no waiting, sent in large messages
                    continue
                if pending:
                    await self.write_message(bytes(pending), binary=True)
                    pending.clear()
                    self.clock.restart(self.start_ms)  # the clock starts once the picture has caught up
                await self._until_due(time_ms)
                await self.write_message(data, binary=True)
                if time.monotonic() - last_position >= POSITION_EVERY_S:
                    last_position = time.monotonic()
                    self._send_position()
            if len(pending) >= CATCH_UP_BATCH:
                await self.write_message(bytes(pending), binary=True)
                pending.clear()
        if pending:
            await self.write_message(bytes(pending), binary=True)

    async def _until_due(self, time_ms: int) -> None:
        while (wait := self.clock.wait_s(time_ms)) != 0.0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(wait, POSITION_EVERY_S) if wait else None)
            self._send_position()

    def _send_position(self) -> None:
        position = min(self.clock.position_ms(), self.index.duration_ms)
        self._send_json(
            {
                "position_ms": max(position, self.start_ms),
                "paused": self.clock.paused,
                "speed": self.clock.speed,
            }
        )

    def _send_json(self, data: dict) -> None:
        with contextlib.suppress(WebSocketClosedError):
            self.write_message(json.dumps(data))

    def on_close(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, errors.BrokerError | tornado.web.HTTPError):
            BaseHandler.log_exception(self, typ, value, tb)
            return
        super().log_exception(typ, value, tb)


default_handlers = [
    (r"/admin/recordings", RecordingsHandler),
    (rf"/admin/recordings/({SESSION})/({NAME})", RecordingPlayerHandler),
    (rf"/admin/recordings/({SESSION})/({NAME})/replay", RecordingReplayHandler),
]
