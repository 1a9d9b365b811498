"""broker/recordings.py: the recording format on disk, written and read back, listing, ids and retention."""

from __future__ import annotations

import datetime as dt
import os
import zlib

import pytest

from broker.recordings import (
    SERVER_DATA,
    SERVER_INIT,
    RecordingFile,
    RecordingIndex,
    RecordingNotFound,
    list_recordings,
    new_recording_name,
    purge_recordings,
    read_index,
    read_records,
    recording_path,
    utc_text,
    write_index,
)

NOW = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)


def new_index(session_id: str = "0b6c1f6e-1111-4c1d-9a55-2f7f5c1e7a01", user: str = "kimmj", at=NOW):
    name = new_recording_name(at)
    return RecordingIndex(
        id=f"{session_id}/{name}",
        session_id=session_id,
        username=user,
        pool="mois-office",
        desktop="vdi-mois-office-1",
        desktop_id=1,
        started_at=utc_text(at),
    )


def write(root, index, records, *, segment_bytes=1 << 20, segment_ms=600_000, close=True) -> RecordingFile:
    file = RecordingFile(root, index, segment_bytes=segment_bytes, segment_ms=segment_ms, level=3)
    file.append(records)
    if close:
        file.close(NOW + dt.timedelta(minutes=5))
    return file


def test_records_come_back_in_order_across_segments_rotated_by_size(tmp_path):
    # Random bytes: incompressible, so the compressed size, which rotation counts, grows with every record.
    records = [(SERVER_INIT, 0, b"init")] + [(SERVER_DATA, 10 * n, os.urandom(5000)) for n in range(1, 40)]
    file = write(tmp_path, new_index(), records, segment_bytes=40_000)
    index = read_index(file.directory)
    assert len(index.segments) > 1 and file.segments_closed == len(index.segments)
    assert list(read_records(file.directory)) == records
    assert (index.state, index.duration_ms, index.raw_bytes) == ("complete", 390, 4 + 39 * 5000)
    assert index.bytes == sum((file.directory / s.name).stat().st_size for s in index.segments)
    assert [s.first_ms for s in index.segments] == sorted(s.first_ms for s in index.segments)


def test_segments_rotate_by_time(tmp_path):
    records = [(SERVER_DATA, ms, b"x") for ms in (0, 400, 900, 1000, 1500, 2100)]
    file = write(tmp_path, new_index(), records, segment_ms=1000)
    assert [(s.first_ms, s.last_ms) for s in read_index(file.directory).segments] == [(0, 1000), (1500, 2100)]


def test_a_recording_cut_short_reads_up_to_its_last_flush(tmp_path):
    """A gateway that died mid-recording: the segment was never finished, the index says "recording"."""
    records = [(SERVER_INIT, 0, b"init"), (SERVER_DATA, 5, b"a" * 1000), (SERVER_DATA, 9, b"b" * 1000)]
    file = write(tmp_path, new_index(), records, close=False)
    file.abandon()
    assert read_index(file.directory).state == "recording"
    assert list(read_records(file.directory)) == records
    # Bytes of a later, unflushed write: garbage after the flush point decodes to nothing more.
    with (file.directory / "seg-00000.zlib").open("ab") as segment:
        segment.write(zlib.compress(b"not a record stream")[5:])
    assert list(read_records(file.directory)) == records


@pytest.mark.parametrize(
    "recording_id",
    [
        "../etc/x",
        "abc/../../etc",
        "abc/20261206T090000Z-0123abcd/..",
        "a" * 65 + "/20261206T090000Z-0123abcd",
        "abc",
    ],
)
def test_ids_that_are_not_a_session_and_a_recording_name_are_refused(tmp_path, recording_id):
    with pytest.raises(RecordingNotFound):
        recording_path(tmp_path, recording_id)


def test_listing_filters_by_user_and_session_newest_first(tmp_path):
    first = new_index(user="kimmj", at=NOW)
    second = new_index(user="kimmj", at=NOW + dt.timedelta(hours=1))
    other = new_index(session_id="7d0e2c55-2222-4b9a-8c11-0a0b0c0d0e0f", user="choijw")
    for index in (first, second, other):
        write(tmp_path, index, [(SERVER_INIT, 0, b"i")])
    assert [i.id for i in list_recordings(tmp_path)] == [second.id, first.id, other.id]
    assert [i.id for i in list_recordings(tmp_path, username="choijw")] == [other.id]
    assert [i.id for i in list_recordings(tmp_path, session_id=first.session_id)] == [second.id, first.id]
    assert list_recordings(tmp_path, session_id="../x") == []
    assert list_recordings(tmp_path / "missing") == []


def test_purge_deletes_by_end_time_and_empty_session_directories(tmp_path):
    old, new = new_index(), new_index(session_id="7d0e2c55-2222-4b9a-8c11-0a0b0c0d0e0f")
    write(tmp_path, old, [(SERVER_INIT, 0, b"i")])
    write(tmp_path, new, [(SERVER_INIT, 0, b"i")])
    ended = NOW + dt.timedelta(minutes=5)
    assert purge_recordings(tmp_path, ended) == []  # ended exactly at the cutoff: kept
    new_path = recording_path(tmp_path, new.id)
    index = read_index(new_path)
    index.ended_at = utc_text(ended + dt.timedelta(days=1))
    write_index(new_path, index)
    assert purge_recordings(tmp_path, ended + dt.timedelta(seconds=1)) == [old.id]
    assert not (tmp_path / old.session_id).exists()
    assert [i.id for i in list_recordings(tmp_path)] == [new.id]
