"""Long steps show a bar redrawn in place on a terminal, and plain lines anywhere else."""

import io
import os

from images.progress import Progress


def test_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = Progress("copy disk.qcow2", 4 << 20, stream=stream)
    for _ in range(4):
        progress.advance(1 << 20)
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "#" not in stream.getvalue()
    assert lines[0] == "copy disk.qcow2 ..."
    assert lines[1].startswith("copy disk.qcow2: 100% (4.0 MiB of 4.0 MiB) done in ")
    assert len(lines) == 2


def test_a_bar_redrawn_in_place_on_a_terminal():
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            progress = Progress("checksum disk.qcow2", 2 << 20, stream=terminal)
            progress.advance(1 << 20)
            progress.advance(1 << 20)
            progress.finish()
        written = os.read(primary, 4096).decode()
    finally:
        os.close(primary)
        os.close(secondary)
    assert written.startswith("\rchecksum disk.qcow2: [############------------]  50%")
    assert "[########################] 100% (2.0 MiB of 2.0 MiB) done in " in written
    assert " ...\n" not in written.replace("\r\n", "\n")


def test_a_failed_step_says_so_instead_of_done():
    stream = io.StringIO()
    Progress("host hv1: upload mois-office 2026.11.1", stream=stream).fail("failed")
    assert stream.getvalue() == (
        "host hv1: upload mois-office 2026.11.1 ...\nhost hv1: upload mois-office 2026.11.1: failed\n"
    )
