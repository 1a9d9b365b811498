"""The lab's machine-wide locks: several processes (test sessions, `vdi lab …`, the demo) manage the same
daemons and hosts, and take turns through flock on files in the lab's state directory."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (made, with its directory, if missing) for the block; waits
    while another process holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
