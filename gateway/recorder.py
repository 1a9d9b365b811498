"""Console recording in the gateway: off the relay's hot path, on one writer thread per process.

The relay hands each chunk it sends to the browser to its tunnel's `Recorder`, which stamps it and puts
it on a queue: no disk, no compression, no lock on the event loop. The writer thread drains the queue,
compresses (zlib releases the GIL, so it runs beside the loop on another core) and writes segments
through broker/recordings.py. Failures (disk full, write errors, a writer too far behind) come back to
the loop as a reason; the relay decides what they mean for the console (the pool's `recording`:
"on" keeps it, "required" ends it). docs/recording.md
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from broker.db.tokens import ConsoleTarget
from broker.recordings import (
    SERVER_DATA,
    SERVER_INIT,
    RecordingFile,
    RecordingIndex,
    new_recording_name,
    purge_recordings,
    utc_text,
)
from gateway.config import GatewaySettings
from monitoring.metrics import (
    RECORDING_BYTES_WRITTEN,
    RECORDING_FAILURES,
    RECORDING_SEGMENTS,
    RECORDINGS_ACTIVE,
    RECORDINGS_PURGED,
    RecordingFailure,
)

log = logging.getLogger(__name__)

MB = 1024 * 1024
_STOP = object()


class RecordingFailed(Exception):
    def __init__(self, reason: RecordingFailure, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _failure_of(exc: OSError) -> RecordingFailure:
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return RecordingFailure.DISK_FULL if full else RecordingFailure.WRITE_ERROR


class Recorder:
    """One tunnel's recording, as the relay sees it: `server(data)` on the loop, `close()` at the end."""

    def __init__(self, service: RecordingService, file: RecordingFile, on_failure: Callable) -> None:
        self.service, self.file, self.on_failure = service, file, on_failure
        self.id = file.index.id
        self.failed: RecordingFailure | None = None
        self._started = time.monotonic()
        self._queued = 0  # bytes put on the queue (the loop's count) …
        self.written = 0  # … and taken off it (the writer's): their difference is the backlog
        self._closed = False

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self._started) * 1000)

    def server(self, data: bytes) -> None:
        if self.failed is not None or self._closed:
            return
        self._queued += len(data)
        if self._queued - self.written > self.service.backlog_bytes:
            self.fail(RecordingFailure.BACKLOG, "the writer fell behind (gateway.recording_backlog_mb)")
            return
        self.service.put((self, SERVER_DATA, self.elapsed_ms(), data))

    def fail(self, reason: RecordingFailure, detail: str) -> None:
        """On the loop: the recording stops here; what was written stays, marked failed."""
        if self.failed is not None or self._closed:
            return
        self.failed = reason
        RECORDING_FAILURES.labels(reason=reason.value).inc()
        log.warning("recording %s stopped: %s: %s", self.id, reason.value, detail)
        self.service.put((self, "close", reason.value, None))
        self.on_failure(reason)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.failed is None:
            self.service.put((self, "close", None, None))


class RecordingService:
    """The process's recordings: starting them, the writer thread, the retention purge."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.root: Path | None = settings.recording_dir
        self.backlog_bytes = settings.recording_backlog_mb * MB
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._purge_task: asyncio.Task | None = None

    # -- on the loop -------------------------------------------------------------------------------

    async def start(self, target: ConsoleTarget, server_init: bytes | None, on_failure: Callable) -> Recorder:
        """A new recording of the tunnel to `target`, its first record the ServerInit the browser gets.

        RecordingFailed (counted) when it cannot start: no directory configured, too little free space,
        the directory not writable, or a desktop without a VNC password (`server_init` None: the byte
        relay does not frame the stream, so there is no ServerInit to replay from).
        """
        try:
            if server_init is None:
                raise RecordingFailed(
                    RecordingFailure.UNFRAMED, "the desktop has no VNC password (byte relay)"
                )
            if self.root is None:
                raise RecordingFailed(RecordingFailure.WRITE_ERROR, "gateway.recording_dir is not set")
            file = await asyncio.get_running_loop().run_in_executor(None, self._create, target)
        except RecordingFailed as exc:
            RECORDING_FAILURES.labels(reason=exc.reason.value).inc()
            raise
        self._ensure_writer()
        recorder = Recorder(self, file, on_failure)
        RECORDINGS_ACTIVE.inc()
        self.put((recorder, SERVER_INIT, 0, server_init))
        return recorder

    def put(self, item: tuple) -> None:
        self._queue.put(item)

    def _ensure_writer(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._write_forever, name="recording-writer", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Finish the queue (every open recording's index is written) and stop the thread."""
        if self._purge_task is not None:
            self._purge_task.cancel()
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30)
            self._thread = None

    # -- starting (executor) -----------------------------------------------------------------------

    def _create(self, target: ConsoleTarget) -> RecordingFile:
        assert self.root is not None
        now = dt.datetime.now(dt.UTC)
        index = RecordingIndex(
            id=f"{target.session_id}/{new_recording_name(now)}",
            session_id=target.session_id,
            username=target.username,
            pool=target.pool_name,
            desktop=target.domain_name,
            desktop_id=target.desktop_id,
            started_at=utc_text(now),
        )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._check_free_space()
            return RecordingFile(
                self.root,
                index,
                segment_bytes=self.settings.recording_segment_mb * MB,
                segment_ms=self.settings.recording_segment_s * 1000,
                level=self.settings.recording_compression_level,
            )
        except OSError as exc:
            raise RecordingFailed(_failure_of(exc), f"{self.root}: {exc.strerror or exc}") from None

    def _check_free_space(self) -> None:
        assert self.root is not None
        free = shutil.disk_usage(self.root).free
        if free < self.settings.recording_min_free_mb * MB:
            raise RecordingFailed(
                RecordingFailure.DISK_FULL,
                f"{self.root} has {free // MB} MB free, less than gateway.recording_min_free_mb",
            )

    # -- the writer thread -------------------------------------------------------------------------

    def _write_forever(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < 4096:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = _STOP in batch
            try:
                self._write_batch([item for item in batch if item is not _STOP])
            except Exception:
                # A bug must not kill the thread: its recordings would then stop as "backlog".
                log.exception("recording writer failed on a batch")
            if stop:
                return

    def _write_batch(self, batch: list[tuple]) -> None:
        by_recorder: dict[Recorder, list[tuple]] = {}
        for item in batch:
            by_recorder.setdefault(item[0], []).append(item)
        for recorder, items in by_recorder.items():
            self._write_items(recorder, items)

    def _write_items(self, recorder: Recorder, items: list[tuple]) -> None:
        records = [(kind, at, data) for _, kind, at, data in items if kind != "close"]
        closing = [item for item in items if item[1] == "close"]
        file = recorder.file
        if file is None:
            return
        try:
            if records:
                self._append(recorder, records)
            if closing:
                self._finish(recorder, closing[0][2])
        except (OSError, RecordingFailed) as exc:
            self._fail_from_thread(recorder, exc)

    def _append(self, recorder: Recorder, records: list[tuple]) -> None:
        closed = recorder.file.segments_closed
        RECORDING_BYTES_WRITTEN.inc(recorder.file.append(records))
        recorder.written += sum(len(data) for kind, _, data in records if kind == SERVER_DATA)
        if recorder.file.segments_closed != closed:
            RECORDING_SEGMENTS.inc(recorder.file.segments_closed - closed)
            self._check_free_space()  # at each new segment, so a filling disk stops recordings early

    def _finish(self, recorder: Recorder, failure: str | None) -> None:
        closed = recorder.file.segments_closed
        RECORDING_BYTES_WRITTEN.inc(recorder.file.close(dt.datetime.now(dt.UTC), failure))
        RECORDING_SEGMENTS.inc(recorder.file.segments_closed - closed)
        recorder.file = None
        RECORDINGS_ACTIVE.dec()

    def _fail_from_thread(self, recorder: Recorder, exc: Exception) -> None:
        reason = exc.reason if isinstance(exc, RecordingFailed) else _failure_of(exc)
        log.warning("recording %s: %s", recorder.id, exc)
        file, recorder.file = recorder.file, None
        try:
            file.abandon()
            file.close(dt.datetime.now(dt.UTC), reason.value)
        except OSError:
            pass  # the index keeps its last state; the purge still finds it by age
        RECORDINGS_ACTIVE.dec()
        self._call_soon(recorder.fail, reason, str(exc))

    def _call_soon(self, callback: Callable, *args) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    # -- retention ---------------------------------------------------------------------------------

    def start_purge(self) -> None:
        if self.root is not None and self._purge_task is None:
            self._purge_task = asyncio.create_task(self._purge_forever())

    async def _purge_forever(self) -> None:
        while True:
            try:
                await self.purge()
            except OSError:
                log.exception("recording purge failed")
            await asyncio.sleep(self.settings.recording_purge_interval_s)

    async def purge(self, now: dt.datetime | None = None) -> list[str]:
        """Delete recordings past gateway.recording_retention_days; their ids."""
        if self.root is None:
            return []
        cutoff = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=self.settings.recording_retention_days)
        purged = await asyncio.get_running_loop().run_in_executor(None, purge_recordings, self.root, cutoff)
        RECORDINGS_PURGED.inc(len(purged))
        for recording_id in purged:
            log.info(
                "recording %s deleted: older than %d days",
                recording_id,
                self.settings.recording_retention_days,
            )
        return purged
