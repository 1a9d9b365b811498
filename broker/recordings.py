"""Console recordings on disk: the format the gateway writes and the broker's player reads.

A recording is what one console tunnel sent to the browser after the RFB handshake: the ServerInit the
browser got, then every server message it got (after the clipboard policy), each with its time in
milliseconds since the tunnel opened. It lives in a directory of its own, found by session id:

    <recording_dir>/<session id>/<recording>/index.json       who, where, when, segments, bytes
    <recording_dir>/<session id>/<recording>/seg-00000.zlib   records, one zlib stream per segment

A segment is one zlib stream (RFC 1950) of records `type u8, time_ms u32, length u32, data`, beginning
with MAGIC; each is decodable alone, and a segment cut short by a crash decodes up to its last flush.
The index is rewritten whole (write, then rename) at the start, at each new segment and at the end.
Nothing here runs on an event loop: the gateway calls it from its writer thread, the broker from an
executor. (docs/recording.md)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

MAGIC = b"VDIREC1\n"
RECORD_HEADER = struct.Struct(">BII")
SERVER_INIT = 1  # the ServerInit (section 7.3.2) the browser got: the player's own handshake ends with it
SERVER_DATA = 2  # server-to-client messages as the browser got them
INDEX = "index.json"
SEGMENT_NAME = "seg-{:05d}.zlib"
SEGMENT_PATTERN = re.compile(r"seg-\d{5}\.zlib")
# Session ids are the broker's UUIDs; recording names are made below. Both are checked before any path
# is built from them, so a crafted id cannot leave the recordings directory.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RECORDING_NAME = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
READ_PIECE = 256 * 1024
FORMAT_VERSION = 1


class RecordingNotFound(Exception):
    pass


def utc_text(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class SegmentInfo:
    name: str
    bytes: int = 0  # compressed, on disk
    raw_bytes: int = 0  # recorded RFB bytes in it
    first_ms: int = 0
    last_ms: int = 0


@dataclass
class RecordingIndex:
    """index.json: what the list page shows and the player needs."""

    id: str  # "<session id>/<recording name>"
    session_id: str
    username: str
    pool: str
    desktop: str
    desktop_id: int
    started_at: str
    ended_at: str | None = None
    state: str = "recording"  # "recording", "complete" or "failed" (stopped early, kept up to there)
    failure: str | None = None
    duration_ms: int = 0
    bytes: int = 0
    raw_bytes: int = 0
    segments: list[SegmentInfo] = field(default_factory=list)
    version: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, data: dict) -> RecordingIndex:
        known = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        known["segments"] = [SegmentInfo(**segment) for segment in data.get("segments", [])]
        return cls(**known)

    def as_json(self) -> dict:
        return asdict(self)


def new_recording_name(started: dt.datetime) -> str:
    return f"{started.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{os.urandom(4).hex()}"


def recording_path(root: Path, recording_id: str) -> Path:
    """The directory of `session/name`; RecordingNotFound for anything that is not such an id."""
    session_id, _, name = recording_id.partition("/")
    if not SESSION_ID.fullmatch(session_id) or not RECORDING_NAME.fullmatch(name):
        raise RecordingNotFound(recording_id)
    return root / session_id / name


def write_index(directory: Path, index: RecordingIndex) -> None:
    temporary = directory / f".{INDEX}.tmp"
    temporary.write_text(json.dumps(index.as_json(), indent=1), encoding="utf-8")
    os.replace(temporary, directory / INDEX)


def read_index(directory: Path) -> RecordingIndex:
    try:
        return RecordingIndex.from_json(json.loads((directory / INDEX).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise RecordingNotFound(str(directory)) from exc


class RecordingFile:
    """Writes one recording: segments rotated by size and age, the index kept current. Not thread-safe:
    one writer thread owns it."""

    def __init__(
        self, root: Path, index: RecordingIndex, *, segment_bytes: int, segment_ms: int, level: int
    ) -> None:
        self.directory = recording_path(root, index.id)
        self.index = index
        self.segment_bytes, self.segment_ms, self.level = segment_bytes, segment_ms, level
        self._file = None
        self._compressor = None
        self.segments_closed = 0
        self.directory.mkdir(parents=True, exist_ok=False)
        write_index(self.directory, index)

    def append(self, records: list[tuple[int, int, bytes]]) -> int:
        """Write records (type, time_ms, data) and flush them to the file; compressed bytes written."""
        written = 0
        for kind, time_ms, data in records:
            if self._file is None:
                written += self._open_segment(time_ms)
            segment = self.index.segments[-1]
            chunk = self._compressor.compress(RECORD_HEADER.pack(kind, time_ms, len(data)))
            chunk += self._compressor.compress(data)
            written += self._write(chunk)
            segment.raw_bytes += len(data)
            segment.last_ms = time_ms
            self.index.raw_bytes += len(data)
            self.index.duration_ms = max(self.index.duration_ms, time_ms)
            if segment.bytes >= self.segment_bytes or time_ms - segment.first_ms >= self.segment_ms:
                written += self._close_segment()
        if self._file is not None:
            # A crash loses at most what arrived since the last batch: a sync flush ends on a byte boundary.
            written += self._write(self._compressor.flush(zlib.Z_SYNC_FLUSH))
            self._file.flush()
        return written

    @property
    def segment_open(self) -> bool:
        return self._file is not None

    def _open_segment(self, time_ms: int) -> int:
        name = SEGMENT_NAME.format(len(self.index.segments))
        self._file = open(self.directory / name, "xb")  # noqa: SIM115 - held until the segment is rotated
        self._compressor = zlib.compressobj(self.level)
        self.index.segments.append(SegmentInfo(name, first_ms=time_ms, last_ms=time_ms))
        write_index(self.directory, self.index)
        return self._write(self._compressor.compress(MAGIC))

    def _write(self, chunk: bytes) -> int:
        if chunk:
            self._file.write(chunk)
            self.index.segments[-1].bytes += len(chunk)
            self.index.bytes += len(chunk)
        return len(chunk)

    def _close_segment(self) -> int:
        written = self._write(self._compressor.flush(zlib.Z_FINISH))
        self._file.close()
        self._file, self._compressor = None, None
        self.segments_closed += 1
        write_index(self.directory, self.index)
        return written

    def close(self, ended_at: dt.datetime, failure: str | None = None) -> int:
        """Finish the last segment and mark the index complete (or failed, with why); bytes written."""
        written = 0
        try:
            if self._file is not None:
                written = self._close_segment()
        finally:
            self.index.ended_at = utc_text(ended_at)
            self.index.state = "failed" if failure else "complete"
            self.index.failure = failure
            write_index(self.directory, self.index)
        return written

    def abandon(self) -> None:
        """After a write error: close the file without writing more; the index keeps what it said."""
        if self._file is not None:
            self._file.close()
            self._file = None


# -- reading ---------------------------------------------------------------------------------------


def _segment_records(path: Path) -> Iterator[tuple[int, int, bytes]]:
    decompressor = zlib.decompressobj()
    buffer = bytearray()
    magic_seen = False
    with path.open("rb") as stream:
        while piece := stream.read(READ_PIECE):
            inflated, intact = _inflate(decompressor, piece)
            buffer += inflated
            if not magic_seen and len(buffer) >= len(MAGIC):
                if bytes(buffer[: len(MAGIC)]) != MAGIC:
                    return
                del buffer[: len(MAGIC)]
                magic_seen = True
            if magic_seen:
                yield from _take_records(buffer)
            if not intact:
                return  # a segment cut short by a crash: what decoded up to the break


def _inflate(decompressor, piece: bytes) -> tuple[bytes, bool]:
    """What `piece` inflates to, and False once the stream breaks (the tail of a crashed write): then
    what came before the break, found byte by byte from the state before the piece."""
    saved = decompressor.copy()
    try:
        return decompressor.decompress(piece), True
    except zlib.error:
        pass
    out = bytearray()
    for at in range(len(piece)):
        try:
            out += saved.decompress(piece[at : at + 1])
        except zlib.error:
            break
    return bytes(out), False


def _take_records(buffer: bytearray) -> Iterator[tuple[int, int, bytes]]:
    at = 0
    while len(buffer) - at >= RECORD_HEADER.size:
        kind, time_ms, length = RECORD_HEADER.unpack_from(buffer, at)
        end = at + RECORD_HEADER.size + length
        if len(buffer) < end:
            break
        yield kind, time_ms, bytes(buffer[at + RECORD_HEADER.size : end])
        at = end
    del buffer[:at]


def read_records(directory: Path) -> Iterator[tuple[int, int, bytes]]:
    """(type, time_ms, data) of a recording in order, over its segments as they are on disk."""
    for path in sorted(p for p in directory.iterdir() if SEGMENT_PATTERN.fullmatch(p.name)):
        yield from _segment_records(path)


# -- listing and retention -------------------------------------------------------------------------


def _recordings_of_session(session_dir: Path) -> Iterator[Path]:
    if session_dir.is_dir() and SESSION_ID.fullmatch(session_dir.name):
        for directory in session_dir.iterdir():
            if directory.is_dir() and RECORDING_NAME.fullmatch(directory.name):
                yield directory


def _recording_dirs(root: Path) -> Iterator[Path]:
    if root.is_dir():
        for session_dir in root.iterdir():
            yield from _recordings_of_session(session_dir)


def list_recordings(
    root: Path, *, username: str | None = None, session_id: str | None = None, limit: int = 200
) -> list[RecordingIndex]:
    """Recordings newest first, filtered by user and/or session (exact match)."""
    if session_id is None:
        directories = _recording_dirs(root)
    elif SESSION_ID.fullmatch(session_id):
        directories = _recordings_of_session(root / session_id)
    else:
        return []
    found = []
    for directory in directories:
        try:
            index = read_index(directory)
        except RecordingNotFound:
            continue
        if username is None or index.username == username:
            found.append(index)
    found.sort(key=lambda index: index.started_at, reverse=True)
    return found[:limit]


def purge_recordings(root: Path, cutoff: dt.datetime) -> list[str]:
    """Delete recordings that ended before `cutoff` (or whose index was last written before it: a
    recording a crashed gateway never finished); their ids."""
    purged = []
    for directory in list(_recording_dirs(root)):
        try:
            index = read_index(directory)
            ended = parse_utc(index.ended_at) if index.ended_at else None
        except (RecordingNotFound, ValueError):
            ended = None
        if ended is None:
            ended = _last_written(directory)
        if ended < cutoff:
            shutil.rmtree(directory, ignore_errors=True)
            purged.append(f"{directory.parent.name}/{directory.name}")
            _remove_if_empty(directory.parent)
    return purged


def _last_written(directory: Path) -> dt.datetime:
    times = [path.stat().st_mtime for path in directory.iterdir()] or [directory.stat().st_mtime]
    return dt.datetime.fromtimestamp(max(times), dt.UTC)


def _remove_if_empty(directory: Path) -> None:
    with contextlib.suppress(OSError):  # another recording of the session is still there
        directory.rmdir()
