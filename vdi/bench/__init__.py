"""Benchmarks behind `vdi bench …` (vdi/cli/bench.py): each prints JSON. Never run as timed tests."""

from __future__ import annotations

import os
from pathlib import Path


def tree_cpu_s(pid: int, children: dict[int, list[int]] | None = None) -> float:
    """CPU seconds (user + system) of a process, its reaped children (cutime, cstime) and the live
    descendants listed in `children`; 0 for a process that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    # After the command: state is field 3, utime..cstime are fields 14..17 (proc(5)).
    ticks = sum(int(value) for value in fields[11:15])
    own = ticks / os.sysconf("SC_CLK_TCK")
    return own + sum(tree_cpu_s(child, children) for child in (children or {}).get(pid, []))
